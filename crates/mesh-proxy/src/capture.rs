//! Transparent capture inside a pod's network namespace, as Istio's init container
//! does it: iptables `nat` rules redirect the application's outbound TCP to 15001 and
//! inbound TCP to 15006; the proxy reads where a connection was going with
//! `SO_ORIGINAL_DST`. The proxy's own connections carry the socket mark 1337 and are
//! never captured again (a UID can be excluded too, for a proxy that runs as its own
//! user as in Istio).

use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::process::Command;

use crate::config::{INBOUND_PORT, OUTBOUND_PORT};

pub use mesh_net::socket::PROXY_MARK;

/// Which traffic is captured.
#[derive(Debug, Clone)]
pub struct CaptureRules {
    /// Port outbound traffic is redirected to.
    pub outbound_port: u16,
    /// Port inbound traffic is redirected to.
    pub inbound_port: u16,
    /// Connections with this mark are left alone (the proxy's own).
    pub exclude_mark: u32,
    /// Connections of this user are left alone, if set.
    pub exclude_uid: Option<u32>,
    /// Inbound destination ports left alone (e.g. an admin port).
    pub exclude_inbound_ports: Vec<u16>,
    /// Capture inbound traffic too.
    pub inbound: bool,
    /// Send the pod's DNS queries (UDP and TCP port 53, to any server) to the
    /// sidecar's DNS proxy on this port.
    pub dns_port: Option<u16>,
}

impl Default for CaptureRules {
    fn default() -> Self {
        Self {
            outbound_port: OUTBOUND_PORT,
            inbound_port: INBOUND_PORT,
            exclude_mark: PROXY_MARK,
            exclude_uid: None,
            exclude_inbound_ports: vec![15020, 15021, 15090],
            inbound: true,
            dns_port: None,
        }
    }
}

/// Why the rules could not be installed.
#[derive(Debug, thiserror::Error)]
#[error("installing capture rules failed at `{command}`: {reason}")]
pub struct CaptureError {
    /// The command that failed.
    pub command: String,
    /// Its error output.
    pub reason: String,
}

impl CaptureRules {
    /// The rules of `chain` that leave the proxy's own connections alone: its socket
    /// mark, and its user when one is set.
    fn exclusions(&self, chain: &str) -> Vec<Vec<String>> {
        let rule = |m: &[&str]| {
            let mut v: Vec<String> = ["-A", chain, "-m"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect();
            v.extend(m.iter().map(|s| (*s).to_owned()));
            v.extend(["-j".to_owned(), "RETURN".to_owned()]);
            v
        };
        let mut out = vec![rule(&["mark", "--mark", &self.exclude_mark.to_string()])];
        if let Some(uid) = self.exclude_uid {
            out.push(rule(&["owner", "--uid-owner", &uid.to_string()]));
        }
        out
    }

    /// The `iptables -t nat …` argument lists, in order.
    pub fn iptables_commands(&self) -> Vec<Vec<String>> {
        let mut cmds: Vec<Vec<String>> = Vec::new();
        let mut add = |args: &[&str]| {
            let mut v = vec!["-t".to_owned(), "nat".to_owned()];
            v.extend(args.iter().map(|s| (*s).to_owned()));
            cmds.push(v);
        };
        let out_port = self.outbound_port.to_string();
        if let Some(port) = self.dns_port {
            // Before the TCP capture below, so that TCP 53 goes to the DNS proxy too.
            let port = port.to_string();
            add(&["-N", "ISTHMUS_DNS"]);
            for proto in ["udp", "tcp"] {
                add(&[
                    "-A",
                    "OUTPUT",
                    "-p",
                    proto,
                    "--dport",
                    "53",
                    "-j",
                    "ISTHMUS_DNS",
                ]);
            }
            for args in self.exclusions("ISTHMUS_DNS") {
                add(&args.iter().map(String::as_str).collect::<Vec<_>>());
            }
            for proto in ["udp", "tcp"] {
                add(&[
                    "-A",
                    "ISTHMUS_DNS",
                    "-p",
                    proto,
                    "-j",
                    "REDIRECT",
                    "--to-ports",
                    &port,
                ]);
            }
        }
        add(&["-N", "ISTHMUS_OUTPUT"]);
        add(&["-A", "OUTPUT", "-p", "tcp", "-j", "ISTHMUS_OUTPUT"]);
        for args in self.exclusions("ISTHMUS_OUTPUT") {
            add(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
        add(&["-A", "ISTHMUS_OUTPUT", "-o", "lo", "-j", "RETURN"]);
        add(&["-A", "ISTHMUS_OUTPUT", "-d", "127.0.0.0/8", "-j", "RETURN"]);
        add(&[
            "-A",
            "ISTHMUS_OUTPUT",
            "-p",
            "tcp",
            "-j",
            "REDIRECT",
            "--to-ports",
            &out_port,
        ]);
        if self.inbound {
            let in_port = self.inbound_port.to_string();
            add(&["-N", "ISTHMUS_INBOUND"]);
            add(&["-A", "PREROUTING", "-p", "tcp", "-j", "ISTHMUS_INBOUND"]);
            add(&[
                "-A",
                "ISTHMUS_INBOUND",
                "-p",
                "tcp",
                "--dport",
                &in_port,
                "-j",
                "RETURN",
            ]);
            for p in &self.exclude_inbound_ports {
                add(&[
                    "-A",
                    "ISTHMUS_INBOUND",
                    "-p",
                    "tcp",
                    "--dport",
                    &p.to_string(),
                    "-j",
                    "RETURN",
                ]);
            }
            add(&[
                "-A",
                "ISTHMUS_INBOUND",
                "-p",
                "tcp",
                "-j",
                "REDIRECT",
                "--to-ports",
                &in_port,
            ]);
        }
        cmds
    }

    /// Runs the commands with `iptables` in the current network namespace.
    pub fn install(&self) -> Result<(), CaptureError> {
        for args in self.iptables_commands() {
            let command = format!("iptables {}", args.join(" "));
            let out = Command::new("iptables")
                .args(&args)
                .output()
                .map_err(|e| CaptureError {
                    command: command.clone(),
                    reason: format!("{e} (is iptables installed?)"),
                })?;
            if !out.status.success() {
                return Err(CaptureError {
                    command,
                    reason: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                });
            }
        }
        Ok(())
    }
}

/// Where a redirected connection was originally going (IPv4).
pub fn original_dst(socket: &impl AsFd) -> Option<SocketAddr> {
    let addr = nix::sys::socket::getsockopt(socket, nix::sys::socket::sockopt::OriginalDst).ok()?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr));
    Some(SocketAddr::new(ip.into(), u16::from_be(addr.sin_port)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_exclude_the_proxy_and_redirect_the_rest() {
        let cmds: Vec<String> = CaptureRules::default()
            .iptables_commands()
            .iter()
            .map(|c| c.join(" "))
            .collect();
        let pos = |needle: &str| {
            cmds.iter()
                .position(|c| c.contains(needle))
                .unwrap_or(usize::MAX)
        };
        assert!(
            pos("--mark 1337 -j RETURN") < pos("REDIRECT --to-ports 15001"),
            "{cmds:#?}"
        );
        assert!(
            pos("--dport 15021 -j RETURN") < pos("REDIRECT --to-ports 15006"),
            "{cmds:#?}"
        );
        let no_inbound = CaptureRules {
            inbound: false,
            ..Default::default()
        }
        .iptables_commands();
        assert!(!no_inbound.iter().any(|c| c.join(" ").contains("15006")));
        assert!(
            !cmds.iter().any(|c| c.contains("--dport 53")),
            "DNS is off by default"
        );
        let dns: Vec<String> = CaptureRules {
            dns_port: Some(15053),
            ..Default::default()
        }
        .iptables_commands()
        .iter()
        .map(|c| c.join(" "))
        .collect();
        let at = |needle: &str| dns.iter().position(|c| c.contains(needle)).unwrap();
        assert!(at("-p udp --dport 53 -j ISTHMUS_DNS") < at("-p tcp -j ISTHMUS_OUTPUT"));
        assert!(at("ISTHMUS_DNS -m mark --mark 1337") < at("-p udp -j REDIRECT --to-ports 15053"));
        assert!(
            dns.iter()
                .any(|c| c.ends_with("ISTHMUS_DNS -p tcp -j REDIRECT --to-ports 15053"))
        );
    }
}
