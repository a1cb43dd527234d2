#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
//! An SMTP conversation with the sink over a raw TcpStream, pipelined as a real
//! client would, with per-recipient throttling and rejection on command.

use narwhal_fakes::{RecipientRule, SmtpSink};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Conversation {
    reader: BufReader<tokio::net::tcp::OwnedReadHalf>,
    writer: tokio::net::tcp::OwnedWriteHalf,
}

impl Conversation {
    async fn open(sink: &SmtpSink) -> Self {
        let (r, w) = TcpStream::connect(sink.addr()).await.unwrap().into_split();
        Self {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    async fn send(&mut self, text: &str) {
        self.writer.write_all(text.as_bytes()).await.unwrap();
    }

    /// One reply, joined over its continuation lines.
    async fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            self.reader.read_line(&mut line).await.unwrap();
            assert!(line.ends_with("\r\n"), "reply line without CRLF: {line:?}");
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }
}

#[tokio::test]
async fn a_pipelined_conversation_with_throttled_and_rejected_recipients() {
    let sink = SmtpSink::start().await.unwrap();
    sink.set_rule("busy@example.com", RecipientRule::Throttle);
    sink.set_rule(
        "nobody@example.com",
        RecipientRule::Reject(550, "5.1.1 Mailbox does not exist".into()),
    );
    let mut c = Conversation::open(&sink).await;
    assert!(c.reply().await.starts_with("220 "));

    c.send("MAIL FROM:<c@example.org>\r\n").await;
    assert!(c.reply().await.starts_with("503 "), "MAIL before EHLO");

    c.send("EHLO client.example.org\r\n").await;
    let ehlo = c.reply().await;
    assert!(ehlo.starts_with("250-"), "{ehlo}");
    assert!(ehlo.contains("250-PIPELINING\r\n"), "{ehlo}");

    // Pipelined: the whole envelope and DATA in one write.
    c.send(
        "MAIL FROM:<campaign@example.org>\r\nRCPT TO:<ada@example.com>\r\n\
         RCPT TO:<busy@example.com>\r\nRCPT TO:<nobody@example.com>\r\nDATA\r\n",
    )
    .await;
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("250 "));
    assert_eq!(
        c.reply().await,
        "454 4.7.0 Throttling failure: Maximum sending rate exceeded.\r\n"
    );
    assert_eq!(c.reply().await, "550 5.1.1 Mailbox does not exist\r\n");
    assert!(c.reply().await.starts_with("354 "));
    c.send("Subject: Vote\r\n\r\nHello\r\n..a line starting with a dot\r\n.\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 2.0.0 "));

    // A second transaction on the same connection, abandoned with RSET.
    c.send("MAIL FROM:<campaign@example.org>\r\n").await;
    assert!(c.reply().await.starts_with("250 "));
    c.send("RSET\r\n").await;
    assert!(c.reply().await.starts_with("250 "));
    c.send("DATA\r\n").await;
    assert!(
        c.reply().await.starts_with("554 "),
        "DATA without recipients"
    );
    c.send("RCPT TO:<ada@example.com>\r\n").await;
    assert!(c.reply().await.starts_with("503 "), "RCPT without MAIL");
    c.send("BOGUS\r\n").await;
    assert!(c.reply().await.starts_with("500 "));
    c.send("QUIT\r\n").await;
    assert!(c.reply().await.starts_with("221 "));

    assert_eq!(sink.message_count(), 1);
    let m = &sink.messages()[0];
    assert_eq!(m.from, "campaign@example.org");
    assert_eq!(m.recipients, ["ada@example.com"]);
    assert_eq!(
        m.data,
        b"Subject: Vote\r\n\r\nHello\r\n.a line starting with a dot\r\n"
    );
}

#[tokio::test]
async fn a_default_rule_throttles_everyone_until_lifted() {
    let sink = SmtpSink::start().await.unwrap();
    sink.set_default_rule(RecipientRule::Throttle);
    let mut c = Conversation::open(&sink).await;
    c.reply().await;
    c.send("HELO x\r\nMAIL FROM:<a@example.org>\r\nRCPT TO:<b@example.com>\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("454 4.7.0 Throttling failure"));
    sink.set_default_rule(RecipientRule::Accept);
    c.send("RCPT TO:<b@example.com>\r\nDATA\r\nhi\r\n.\r\nQUIT\r\n")
        .await;
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("354 "));
    assert!(c.reply().await.starts_with("250 "));
    assert!(c.reply().await.starts_with("221 "));
    assert_eq!(sink.message_count(), 1);
    assert_eq!(sink.connection_count(), 1);
}
