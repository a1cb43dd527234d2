//! Small text normalizations shared by the other types.

/// Trims and folds every run of Unicode whitespace into one ASCII space.
pub fn collapse_whitespace(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for word in s.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    out
}

/// `collapse_whitespace`, then `None` when nothing is left.
pub fn non_empty(s: &str) -> Option<String> {
    let c = collapse_whitespace(s);
    if c.is_empty() {
        None
    } else {
        Some(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folds_all_whitespace() {
        assert_eq!(collapse_whitespace("  Ada \t\n  Lovelace "), "Ada Lovelace");
        assert_eq!(non_empty(" \t "), None);
        assert_eq!(non_empty(" x "), Some("x".to_string()));
    }
}
