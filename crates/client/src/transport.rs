//! How the bytes travel to the proxy once TCP is up: plain, or (when built in) TLS
//! verified before anything about the task is sent.

use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::error::ClientError;
use crate::tunnel::{Target, TunnelIo};

/// The transport to the Host proxy.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP, as HakuRiver's own host proxy speaks.
    Plain,
}

impl Transport {
    /// Turns a connected socket into the stream the request goes over. For TLS this is
    /// where the handshake and certificate verification happen, bounded by `deadline`.
    pub async fn establish(
        &self,
        tcp: TcpStream,
        _target: &Target,
        _deadline: Instant,
    ) -> Result<Box<dyn TunnelIo>, ClientError> {
        match self {
            Transport::Plain => Ok(Box::new(tcp)),
        }
    }
}
