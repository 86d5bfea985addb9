//! Connection strings in messages: the password they hold never shown.
//!
//! A connection string is a URL (`postgres://user:pw@host/db`) or libpq's
//! `key=value` form, well-formed or not; libpq's own errors quote a
//! malformed one whole. Every message that may carry one (connection
//! errors of the runner and its lock sessions, the command's output) goes
//! through [`scrub_secrets`].

/// The connection string for messages: its password replaced by `***`.
pub fn redact_connection_string(url: &str) -> String {
    scrub_secrets(url, &connection_secrets(url))
}

/// The passwords in a connection string, as written and percent-decoded:
/// the URL's user info and `password=` query parameter, or the key=value
/// form's `password`.
pub fn connection_secrets(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some(rest) = url.split_once("://").map(|(_, rest)| rest) {
        // The user info ends at the last `@` before the path (a password may hold `@` or `/`).
        if let Some(at) = rest.rfind('@') {
            if let Some((_, password)) = rest[..at].split_once(':') {
                found.push(password.to_owned());
            }
        }
        if let Some((_, query)) = rest.split_once('?') {
            for pair in query.split('&') {
                if let Some(value) = pair.strip_prefix("password=") {
                    found.push(value.to_owned());
                }
            }
        }
    } else {
        found.extend(key_value_passwords(url));
    }
    let decoded: Vec<String> = found.iter().filter_map(|s| percent_decoded(s)).collect();
    found.extend(decoded);
    found.retain(|s| !s.is_empty());
    // Longest first, so a password that contains another is replaced whole.
    found.sort_by_key(|s| std::cmp::Reverse(s.len()));
    found.dedup();
    found
}

/// `password=...` in libpq's key=value form (quoted or not).
fn key_value_passwords(text: &str) -> Vec<String> {
    let mut found = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("password") {
        let after = rest[at + "password".len()..].trim_start();
        rest = &rest[at + "password".len()..];
        let Some(value) = after.strip_prefix('=') else {
            continue;
        };
        let value = value.trim_start();
        let password = if let Some(quoted) = value.strip_prefix('\'') {
            let mut out = String::new();
            let mut chars = quoted.chars();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '\'' => break,
                    c => out.push(c),
                }
            }
            out
        } else {
            value.split_whitespace().next().unwrap_or("").to_owned()
        };
        found.push(password);
    }
    found
}

fn percent_decoded(text: &str) -> Option<String> {
    if !text.contains('%') {
        return None;
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .ok()
        .map(|decoded| decoded.into_owned())
}

/// `text` with every secret replaced by `***`.
pub fn scrub_secrets(text: &str, secrets: &[String]) -> String {
    secrets.iter().fold(text.to_owned(), |text, secret| {
        text.replace(secret.as_str(), "***")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_found_in_every_form() {
        let cases = [
            ("postgres://u:secret@host/db", "secret"),
            ("postgres://postgres:secret@[::1/db", "secret"),
            ("postgresql://u:p%40ss@host/db", "p@ss"),
            (
                "postgres://u@host/db?password=secret&sslmode=require",
                "secret",
            ),
            ("host=127.0.0.1 password=secret dbname=x", "secret"),
            ("host=h password = 'se cret' user=u", "se cret"),
        ];
        for (url, password) in cases {
            assert!(
                connection_secrets(url).iter().any(|s| s == password),
                "{url}"
            );
            let shown = redact_connection_string(url);
            assert!(!shown.contains(password), "{url} -> {shown}");
        }
        assert_eq!(
            redact_connection_string("postgres://u:secret@host/db"),
            "postgres://u:***@host/db"
        );
        assert!(connection_secrets("postgres://u@host/db").is_empty());
    }
}
