//! Exact routing for the HTTP functions (admin, settle-spend): a request
//! matches a route only by its whole path, optionally after ONE prefix:
//!
//! * an API Gateway stage segment (`/prod/key/info`): letters, digits,
//!   `-` and `_`, and not itself the first segment of any route (`key`,
//!   `user`, `team`, `organization`, `spend`, …), so `/key/team/delete` is not the team
//!   route behind a stage called `key`;
//! * a Function URL as `cargo lambda watch` serves it,
//!   `/lambda-url/<function>/…` (the function name under the same rules).
//!
//! Anything else (`/key/x/team/delete`, `/a/b/key/info`, `//key/info`) is
//! no route: matching on a suffix would let a caller allowed one prefix
//! reach another route.

/// The route path a request path names, if it has one of the accepted
/// forms: `route`, `/<stage>{route}` or `/lambda-url/<function>{route}`,
/// where `route` is one of `routes` (each `/first/...`). One trailing `/`
/// is ignored.
pub fn route_of<'r>(path: &str, routes: &[&'r str]) -> Option<&'r str> {
    let path = path.strip_suffix('/').unwrap_or(path);
    let exact = |p: &str| routes.iter().copied().find(|r| *r == p);
    if let Some(r) = exact(path) {
        return Some(r);
    }
    let reserved = |segment: &str| routes.iter().any(|r| r.split('/').nth(1) == Some(segment));
    let prefix_ok = |segment: &str| {
        !segment.is_empty()
            && segment.len() <= 128
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && !reserved(segment)
    };
    // `/<stage>{route}`
    let rest = path.strip_prefix('/')?;
    let (first, tail) = rest.split_once('/')?;
    if prefix_ok(first) {
        if let Some(r) = exact(&format!("/{tail}")) {
            return Some(r);
        }
    }
    // `/lambda-url/<function>{route}`
    if first == "lambda-url" {
        let (function, tail) = tail.split_once('/')?;
        if prefix_ok(function) {
            return exact(&format!("/{tail}"));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROUTES: &[&str] = &["/key/info", "/team/delete", "/spend/settle"];

    #[test]
    fn whole_paths_match_after_at_most_one_prefix() {
        for (path, route) in [
            ("/key/info", Some("/key/info")),
            ("/key/info/", Some("/key/info")),
            ("/prod/key/info", Some("/key/info")),
            ("/v1_test-2/team/delete", Some("/team/delete")),
            ("/lambda-url/admin/team/delete", Some("/team/delete")),
            (
                "/lambda-url/settle-spend/spend/settle",
                Some("/spend/settle"),
            ),
        ] {
            assert_eq!(route_of(path, ROUTES), route, "{path}");
        }
    }

    #[test]
    fn suffixes_and_other_prefixes_match_nothing() {
        for path in [
            "/key/x/team/delete",
            "/key/team/delete",
            "/spend/team/delete",
            "/lambda-url/key/team/delete",
            "/a/b/key/info",
            "/prod/lambda-url/admin/key/info",
            "//key/info",
            "/prod//key/info",
            "/pr%2Fod/key/info",
            "/pr.od/key/info",
            "key/info",
            "/key/infox",
            "/key/info//",
            "/key",
            "",
            "/",
        ] {
            assert_eq!(route_of(path, ROUTES), None, "{path}");
        }
    }
}
