//! Each HTTP/1.1 client connection gets an upstream connection of its own, driven inside the
//! client connection's task.
//!
//! A shared pool runs every upstream connection in a task of its own, so each request crossed
//! tasks (and often threads) four times: server task to pool task and back, for the request
//! and for the response. Those wake-ups led the profile. Here the upstream connection's future
//! is polled by [`Affine::drive`], which `http::handle` runs next to the server connection, so
//! a request and its response stay on one task. It is also what a TCP proxy does: one upstream
//! connection per client connection, in step with it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Poll, Waker};

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::ResBody;
use crate::proxy::Link;

/// Why the upstream gave no response.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// The dial failed or timed out.
    #[error("cannot connect: {0}")]
    Connect(String),
    /// The exchange failed once connected.
    #[error("{0}")]
    Http(#[from] hyper::Error),
}

/// The upstream connection of one client connection, if it has one open.
#[derive(Default)]
pub struct Affine {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    sender: Option<SendRequest<ResBody>>,
    /// The upstream `sender` talks to: a changed upstream means a new connection.
    to: Option<std::sync::Arc<String>>,
    driver: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    waker: Option<Waker>,
}

impl Affine {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Drives the upstream connection, whichever is current. Never completes: run it beside
    /// the server connection and drop it with it.
    pub async fn drive(&self) {
        std::future::poll_fn(|cx| {
            let mut state = self.state();
            if let Some(driver) = state.driver.as_mut() {
                if driver.as_mut().poll(cx).is_ready() {
                    state.driver = None;
                }
            }
            state.waker = Some(cx.waker().clone());
            Poll::<()>::Pending
        })
        .await
    }

    /// Sends a request on this client connection's upstream connection, dialling one when
    /// there is none (or it has closed). A request the connection could not take (it closed
    /// in between) is sent once more on a new one. An upgrade gets a connection of its own,
    /// in a task of its own, since it outlives the exchange.
    pub async fn send(
        &self,
        link: &Link,
        mut req: Request<ResBody>,
        upgrade: bool,
    ) -> Result<Response<Incoming>, UpstreamError> {
        for attempt in 0..2 {
            let current = if upgrade {
                None
            } else {
                let mut state = self.state();
                let same = state.to.as_deref() == Some(&*link.upstream());
                state.sender.take().filter(|s| same && !s.is_closed())
            };
            let mut sender = match current {
                Some(sender) => sender,
                None => self.connect(link, upgrade).await?,
            };
            if sender.ready().await.is_err() {
                continue;
            }
            let response = sender.try_send_request(req);
            if !upgrade {
                self.state().sender = Some(sender);
            }
            match response.await {
                Ok(response) => return Ok(response),
                Err(mut err) => match err.take_message() {
                    Some(unsent) if attempt == 0 => {
                        req = unsent;
                        self.state().sender = None;
                    }
                    _ => return Err(err.into_error().into()),
                },
            }
        }
        Err(UpstreamError::Connect(
            "the upstream closed the connection before taking the request".into(),
        ))
    }

    async fn connect(
        &self,
        link: &Link,
        upgrade: bool,
    ) -> Result<SendRequest<ResBody>, UpstreamError> {
        let upstream = link.upstream();
        let timeout = link.settings().connect_timeout;
        if !upgrade {
            self.state().to = Some(upstream.clone());
        }
        let stream =
            match tokio::time::timeout(timeout, TcpStream::connect(upstream.as_str())).await {
                Ok(Ok(stream)) => stream,
                Ok(Err(err)) => return Err(UpstreamError::Connect(err.to_string())),
                Err(_) => {
                    return Err(UpstreamError::Connect(format!(
                        "no answer within {timeout:?}"
                    )));
                }
            };
        let _ = stream.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        let driver = async move {
            if let Err(err) = conn.with_upgrades().await {
                tracing::debug!(%err, "upstream connection ended with an error");
            }
        };
        if upgrade {
            tokio::spawn(driver);
        } else {
            let mut state = self.state();
            state.driver = Some(Box::pin(driver));
            if let Some(waker) = state.waker.take() {
                waker.wake();
            }
        }
        Ok(sender)
    }
}
