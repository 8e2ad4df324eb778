//! `Transport::of` against real loopback failures: each reads as what it is, including a
//! connection cut while the answer's body arrives (reqwest calls that a decode error).

use std::time::Duration;

use shiftkey_auth::Transport;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// A server that accepts once, reads the request, then does `then` with the connection.
async fn server<F, Fut>(then: F) -> std::net::SocketAddr
where
    F: FnOnce(tokio::net::TcpStream) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        if let Ok((mut c, _)) = listener.accept().await {
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf).await;
            then(c).await;
        }
    });
    addr
}

#[tokio::test]
async fn a_refused_connection_a_deadline_and_a_cut_answer_read_as_what_they_are() {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    // Nothing listens on port 9 of loopback.
    let e = http
        .get("http://127.0.0.1:9/?secret=s3cret")
        .send()
        .await
        .unwrap_err();
    assert_eq!(Transport::of(&e), Some(Transport::Refused));
    assert!(!Transport::describe(e).contains("s3cret"));
    // Accepted, never answered.
    let silent = server(|c| async move {
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(c);
    })
    .await;
    let e = http
        .get(format!("http://{silent}/"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(Transport::of(&e), Some(Transport::Timeout));
    // The head arrives, then the connection closes 90 bytes short of the body.
    let cut = server(|mut c| async move {
        let _ = c
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            .await;
        drop(c);
    })
    .await;
    let answer = http.get(format!("http://{cut}/")).send().await.unwrap();
    let e = answer.bytes().await.unwrap_err();
    assert!(e.is_decode(), "reqwest calls it a decode error: {e:?}");
    assert!(
        matches!(Transport::of(&e), Some(Transport::Cut(_))),
        "{:?}",
        Transport::of(&e)
    );
}
