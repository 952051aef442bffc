//! A tiny HTTP/1.1 app for process-level tests: it answers `body` to every request,
//! keeping connections open, on plain threads (no runtime needed).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};

/// Serves `body` on `addr` (port 0 for any) and returns the bound address.
pub fn http_responder(addr: SocketAddr, body: &'static str) -> SocketAddr {
    let listener = TcpListener::bind(addr).expect("binding the test responder");
    let bound = listener.local_addr().expect("a bound address");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let resp = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                );
                while let Ok(n) = s.read(&mut buf) {
                    if n == 0 || s.write_all(resp.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    bound
}
