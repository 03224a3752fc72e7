//! The gRPC peer of part 1: an unauthenticated unary echo over a Unix socket with tonic,
//! the stack a service would otherwise use. The message is opaque bytes (no protobuf: a
//! codec that passes bytes through), so what is measured is gRPC's transport (HTTP/2,
//! framing, the server and client machinery), with a request the size of the point read's.

use bytes::{Buf, BufMut, Bytes};
use std::path::{Path, PathBuf};
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{empty_body, http, Body, BoxFuture, Service, StdError};
use tonic::Status;

/// The echo method's path.
pub const ECHO: &str = "/fold.bench.Echo/Echo";

/// Bytes in, the same bytes out.
#[derive(Debug, Clone, Copy, Default)]
pub struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> BytesCodec {
        BytesCodec
    }

    fn decoder(&mut self) -> BytesCodec {
        BytesCodec
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

/// The echo service, as tonic's generated servers are written.
#[derive(Debug, Clone, Copy)]
pub struct EchoServer;

impl tonic::server::NamedService for EchoServer {
    const NAME: &'static str = "fold.bench.Echo";
}

struct EchoMethod;

impl tonic::server::UnaryService<Bytes> for EchoMethod {
    type Response = Bytes;
    type Future = BoxFuture<tonic::Response<Bytes>, Status>;

    fn call(&mut self, request: tonic::Request<Bytes>) -> Self::Future {
        Box::pin(async move { Ok(tonic::Response::new(request.into_inner())) })
    }
}

impl<B> Service<http::Request<B>> for EchoServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::BoxBody>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if request.uri().path() == ECHO {
            return Box::pin(async move {
                let mut grpc = tonic::server::Grpc::new(BytesCodec);
                Ok(grpc.unary(EchoMethod, request).await)
            });
        }
        Box::pin(async move {
            let unimplemented = http::Response::builder()
                .status(200)
                .header("grpc-status", "12")
                .header("content-type", "application/grpc")
                .body(empty_body())
                .unwrap_or_default();
            Ok(unimplemented)
        })
    }
}

/// Serves the echo on a new Unix socket at `path` until the runtime ends.
///
/// # Errors
///
/// The socket cannot be bound.
pub fn serve(path: &Path) -> std::io::Result<()> {
    let listener = tokio::net::UnixListener::bind(path)?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(EchoServer)
            .serve_with_incoming(incoming),
    );
    Ok(())
}

/// A connected echo client.
#[derive(Debug, Clone)]
pub struct EchoClient {
    grpc: tonic::client::Grpc<tonic::transport::Channel>,
}

impl EchoClient {
    /// Connects to the echo at `path`.
    ///
    /// # Errors
    ///
    /// The socket cannot be reached.
    pub async fn connect(path: PathBuf) -> anyhow::Result<EchoClient> {
        // The URI is a placeholder: the connector dials the Unix socket.
        let channel = tonic::transport::Endpoint::try_from("http://[::]:50051")?
            .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                let path = path.clone();
                async move {
                    let stream = tokio::net::UnixStream::connect(path).await?;
                    Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
                }
            }))
            .await?;
        Ok(EchoClient {
            grpc: tonic::client::Grpc::new(channel),
        })
    }

    /// One unary call: `message` there and back.
    ///
    /// # Errors
    ///
    /// The call failed.
    pub async fn echo(&mut self, message: Bytes) -> anyhow::Result<Bytes> {
        self.grpc.ready().await?;
        let path = http::uri::PathAndQuery::from_static(ECHO);
        let response = self
            .grpc
            .unary(tonic::Request::new(message), path, BytesCodec)
            .await?;
        Ok(response.into_inner())
    }
}
