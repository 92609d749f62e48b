//! How one process reaches a pod: `http://<ip>:<port>`, written once for the
//! gateway (function pods) and the controller (gateway pods).

/// The base URL of a pod's endpoint. IPv6 addresses are bracketed, as a URL
/// authority requires.
pub fn pod_url(ip: &str, port: u16) -> String {
    if ip.contains(':') {
        format!("http://[{ip}]:{port}")
    } else {
        format!("http://{ip}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brackets_ipv6_only() {
        assert_eq!(pod_url("10.88.0.5", 8080), "http://10.88.0.5:8080");
        assert_eq!(pod_url("fd00::5", 8080), "http://[fd00::5]:8080");
        let url = pod_url("fd00::5", 9090);
        assert!(url.parse::<http::Uri>().is_ok(), "{url}");
    }
}
