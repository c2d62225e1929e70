//! The pages and their assets, embedded in the binary so that a gateway is one
//! file to deploy.

use bytes::Bytes;

const LOGIN_HTML: &str = include_str!("../assets/login.html");
const CHAT_HTML: &str = include_str!("../assets/chat.html");
const APP_JS: &str = include_str!("../assets/app.js");
const APP_CSS: &str = include_str!("../assets/app.css");

/// A static asset: its bytes and content type.
#[derive(Debug, Clone, Copy)]
pub struct Asset {
    /// The body.
    pub body: &'static str,
    /// The `Content-Type`.
    pub content_type: &'static str,
}

/// The asset served at `/assets/<name>`.
pub fn asset(name: &str) -> Option<Asset> {
    match name {
        "app.js" => Some(Asset { body: APP_JS, content_type: "text/javascript; charset=utf-8" }),
        "app.css" => Some(Asset { body: APP_CSS, content_type: "text/css; charset=utf-8" }),
        _ => None,
    }
}

/// The chat page (the script fetches everything else).
pub fn chat() -> Bytes {
    Bytes::from_static(CHAT_HTML.as_bytes())
}

/// The login page, with `error` shown (escaped) when there is one.
pub fn login(error: &str) -> Bytes {
    Bytes::from(LOGIN_HTML.replacen("{{error}}", &html_escape::encode_safe(error), 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_error_is_escaped_once() {
        let page = String::from_utf8(login("<b>\"x\"</b>").to_vec()).expect("utf-8");
        assert!(page.contains("&lt;b&gt;&quot;x&quot;&lt;&#x2F;b&gt;"));
        assert!(!page.contains("{{error}}"));
        assert!(!page.contains("<b>\"x\""));
    }

    #[test]
    fn assets_are_known_by_name() {
        assert!(asset("app.js").is_some_and(|a| a.content_type.starts_with("text/javascript")));
        assert!(asset("../Cargo.toml").is_none());
    }

    #[test]
    fn pages_load_no_inline_script() {
        for page in [CHAT_HTML, LOGIN_HTML] {
            assert!(!page.contains("<script>"), "inline scripts break the CSP");
            assert!(!page.contains("<style"), "inline styles break the CSP");
        }
    }
}
