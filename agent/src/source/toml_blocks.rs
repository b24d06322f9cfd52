//! A services file is a list of `[[service]]` tables: parsed one table at a time, its parse
//! costs one table's worth of memory instead of the whole document's (the toml crate builds a
//! spanned document of tens of bytes per byte of text first: ~170 MB for 10,000 services of
//! 10 backends). The split is only taken where it cannot change the meaning: it cuts at lines
//! that are exactly a `[[service]]` header, and whatever comes before the first one must be
//! blank or comments. A header-looking line inside a multi-line string leaves the string
//! unterminated in its block, so that block fails to parse and the caller parses the whole
//! text instead (which also gives errors their exact lines).

/// The blocks of `text`, each with its byte offset, or None when the text does not split.
pub fn split(text: &str) -> Option<Vec<(usize, &str)>> {
    let mut starts = Vec::new();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if is_header(line) {
            starts.push(offset);
        } else if starts.is_empty() && !is_blank_or_comment(line) {
            return None;
        }
        offset += line.len();
    }
    if starts.is_empty() {
        return None;
    }
    let ends = starts.iter().skip(1).copied().chain(std::iter::once(text.len()));
    Some(starts.iter().zip(ends).map(|(&start, end)| (start, &text[start..end])).collect())
}

fn is_header(line: &str) -> bool {
    line.trim_start().strip_prefix("[[service]]").is_some_and(is_blank_or_comment)
}

fn is_blank_or_comment(line: &str) -> bool {
    let line = line.trim();
    line.is_empty() || line.starts_with('#')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_at_headers_only_after_blank_or_comment_text() {
        let text = "# services\n\n[[service]]\nvip = \"10.0.0.1\"\n[[service]]  # second\nvip = \"10.0.0.2\"\n[[service.backends]]\n";
        let blocks = split(text).unwrap_or_default();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0], (12, "[[service]]\nvip = \"10.0.0.1\"\n"));
        assert_eq!(blocks[1].1, "[[service]]  # second\nvip = \"10.0.0.2\"\n[[service.backends]]\n");
        // Anything but comments before the first header: the whole text is parsed.
        assert_eq!(split("service = []\n[[service]]\n"), None);
        assert_eq!(split("# nothing\n"), None);
        assert_eq!(split("[[services]]\n"), None);
    }
}
