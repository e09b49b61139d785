//! `test-backend`: the backend server of the end-to-end tests. For every line a client sends it
//! answers one line with its name, so a long-lived connection can ask again and again which
//! backend it talks to; it closes a connection when the client closes it. A line
//! `bytes <n>` is answered with `n` bytes (at most [`MAX_BYTES`]) and then the name line instead: a
//! response larger than any MTU, for the path MTU tests.
//!
//! `test-backend --listen 0.0.0.0:8080 --name a1`. Built for many short connections per second
//! (SO_REUSEADDR, a large accept backlog, the open-file limit raised to its hard maximum). It has
//! no signal handling of its own: SIGTERM and SIGKILL end it.

use clap::Parser;
use std::net::SocketAddr;
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{TcpSocket, TcpStream},
};

#[derive(Parser)]
#[command(about = "Answers every line with its name (backend of the end-to-end tests)")]
struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Name to answer with.
    #[arg(long)]
    name: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    raise_nofile();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(serve(args))
}

async fn serve(args: Args) -> anyhow::Result<()> {
    let socket = if args.listen.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(args.listen)?;
    let listener = socket.listen(4096)?;
    let answer: std::sync::Arc<[u8]> = format!("{}\n", args.name).into_bytes().into();
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = handle(stream, &answer).await;
                });
            }
            Err(e) => {
                // EMFILE and friends: back off a little instead of spinning.
                eprintln!("test-backend {}: accept: {e}", args.name);
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    }
}

/// Largest response a `bytes <n>` line gets.
const MAX_BYTES: usize = 16 << 20;

/// Answers each line with the name until the client closes (or the connection fails).
async fn handle(stream: TcpStream, answer: &[u8]) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut read = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = read.read_until(b'\n', &mut line).await?;
        if n == 0 {
            return Ok(());
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(count) = text.trim_end().strip_prefix("bytes ").and_then(|c| c.parse::<usize>().ok()) {
            write.write_all(&vec![b'.'; count.min(MAX_BYTES)]).await?;
        }
        write.write_all(answer).await?;
    }
}

/// Raises the soft open-file limit to the hard one (thousands of connections at once).
fn raise_nofile() {
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}
