//! An error and its causes on one line, for messages and logs.

/// `e`, then each of its sources after `": "`, skipping a cause whose text
/// the line already holds (many errors repeat their source's message).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        src = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading chunk 7")]
    struct Outer(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("open failed: {0}")]
    struct Repeats(#[source] std::io::Error);

    #[test]
    fn causes_follow_once() {
        let io = || std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(chain(&Outer(io())), "reading chunk 7: refused");
        assert_eq!(chain(&Repeats(io())), "open failed: refused");
        assert_eq!(chain(&io()), "refused");
    }
}
