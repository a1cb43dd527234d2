//! The thread where SQLite's write transactions run.

/// A thread of its own that runs the write transactions of SQLite's single writer:
/// the donation service's group commits and the hub's batches (imports included).
///
/// A batch is a transaction of several statements, each a round trip to sqlx's SQLite
/// worker thread, and the write connection is held from the first to the commit.
/// On the shared runtime, a worker woken by a statement's result waits in line behind
/// the request handlers (a wake from another thread joins the runtime's global queue),
/// so under load most of the time the writer was held went to waiting for the next
/// statement to be sent. On a thread of its own the next statement goes at once.
/// One thread for every writer of the process: they share the one connection anyway.
/// It lives as long as the process, so connections a pool opens from it stay usable
/// everywhere.
pub fn commit_thread() -> Option<&'static tokio::runtime::Handle> {
    static HANDLE: std::sync::OnceLock<Option<tokio::runtime::Handle>> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            let handle = rt.handle().clone();
            std::thread::Builder::new()
                .name("narwhal-commit".into())
                .spawn(move || rt.block_on(std::future::pending::<()>()))
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// Runs `fut` on the commit thread when there is one, else where it is called.
pub async fn on_commit_thread<T, F>(fut: F) -> crate::error::Result<T>
where
    T: Send + 'static,
    F: std::future::Future<Output = crate::error::Result<T>> + Send + 'static,
{
    match commit_thread() {
        Some(h) => h
            .spawn(fut)
            .await
            .map_err(|e| crate::StoreError::Invalid(format!("the commit thread: {e}")))?,
        None => fut.await,
    }
}
