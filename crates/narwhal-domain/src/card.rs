//! Recognizing a payment card number typed where it does not belong.
//!
//! Narwhal never accepts card data: cards go into the processor's own fields. A donor
//! who types their card number into "occupation" or a note must be refused, and the
//! value must never be stored or logged. [`contains_card_number`] finds a run of 13 to
//! 19 digits (spaces and dashes allowed between them) that passes the Luhn check.

/// Whether `text` contains something that looks like a payment card number.
pub fn contains_card_number(text: &str) -> bool {
    let mut digits: Vec<u8> = Vec::with_capacity(19);
    let mut last_was_sep = false;
    // A whole run of digits: a card number is 13 to 19 digits and passes Luhn.
    let check = |d: &[u8]| -> bool { (13..=19).contains(&d.len()) && luhn_valid(d) };
    for ch in text.chars() {
        if let Some(d) = ch.to_digit(10) {
            digits.push(d as u8);
            last_was_sep = false;
        } else if (ch == ' ' || ch == '-') && !digits.is_empty() && !last_was_sep {
            last_was_sep = true;
        } else {
            if check(&digits) {
                return true;
            }
            digits.clear();
            last_was_sep = false;
        }
    }
    check(&digits)
}

/// The Luhn checksum over a sequence of digits.
pub fn luhn_valid(digits: &[u8]) -> bool {
    if digits.is_empty() {
        return false;
    }
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_test_cards_in_any_layout() {
        for text in [
            "4242424242424242",
            "4242 4242 4242 4242",
            "4242-4242-4242-4242",
            "teacher 5555555555554444 thanks",
            "378282246310005",
            "my card is 4000 0566 5566 5556.",
        ] {
            assert!(contains_card_number(text), "{text}");
        }
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        for text in [
            "Teacher",
            "4242424242424241",
            "call 614-555-0100",
            "Zip 43215-1234",
            "1234567890123",
            "order 12 of 2026",
        ] {
            assert!(!contains_card_number(text), "{text}");
        }
    }
}
