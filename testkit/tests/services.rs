//! The private servers of `testkit::services`: they answer, stop (port
//! closed), start again (answer again, RabbitMQ with its streams intact) and
//! leave no process behind when dropped.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use testkit::services::{RabbitNode, RedisServer};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

async fn redis_ping(addr: SocketAddr) -> anyhow::Result<String> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"PING\r\n").await?;
    let mut reply = [0_u8; 7];
    tokio::time::timeout(Duration::from_secs(2), stream.read_exact(&mut reply)).await??;
    Ok(String::from_utf8_lossy(&reply).into_owned())
}

/// The first byte the broker answers the AMQP 0-9-1 header with (1: a
/// method frame, `Connection.Start`).
async fn amqp_hello(addr: SocketAddr) -> anyhow::Result<u8> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.write_all(b"AMQP\x00\x00\x09\x01").await?;
    Ok(tokio::time::timeout(Duration::from_secs(5), stream.read_u8()).await??)
}

async fn refused(addr: SocketAddr) -> bool {
    TcpStream::connect(addr).await.is_err()
}

async fn alive(pid: u32) -> bool {
    let status = tokio::process::Command::new("kill")
        .arg("-0")
        .arg(pid.to_string())
        .stderr(std::process::Stdio::null())
        .status()
        .await;
    status.is_ok_and(|s| s.success())
}

#[tokio::test]
async fn redis_stops_restarts_and_dies_with_its_handle() -> anyhow::Result<()> {
    let mut redis = RedisServer::start().await?;
    let addr = redis.addr();
    assert_ne!(addr.port(), 6379);
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}", addr.port()));
    assert_eq!(redis_ping(addr).await?, "+PONG\r\n");

    redis.stop().await?;
    assert!(refused(addr).await, "port still open after stop");
    redis.start_again().await?;
    assert_eq!(redis_ping(addr).await?, "+PONG\r\n");

    redis.kill().await?;
    assert!(refused(addr).await, "port still open after kill");
    redis.start_again().await?;
    assert_eq!(redis_ping(addr).await?, "+PONG\r\n");

    let pid = redis.pid().context("no pid")?;
    assert!(alive(pid).await);
    drop(redis);
    assert!(!alive(pid).await, "redis-server {pid} survived its handle");
    assert!(refused(addr).await);
    Ok(())
}

/// Declares a stream and publishes `text` to it, with a confirm.
async fn publish(url: &str, queue: &str, text: &str) -> anyhow::Result<()> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.confirm_select(ConfirmSelectOptions::default()).await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    channel.queue_declare(queue.into(), options, arguments).await?;
    let confirm = channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            text.as_bytes(),
            BasicProperties::default(),
        )
        .await?
        .await?;
    ensure!(confirm.is_ack(), "publish not confirmed");
    connection.close(200, "done".into()).await?;
    Ok(())
}

/// The first message of a stream.
async fn first(url: &str, queue: &str) -> anyhow::Result<String> {
    let connection = Connection::connect(url, ConnectionProperties::default()).await?;
    let channel = connection.create_channel().await?;
    channel.basic_qos(10, BasicQosOptions::default()).await?;
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), AMQPValue::LongString("first".into()));
    let mut consumer =
        channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), arguments).await?;
    let delivery = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .context("no delivery within 10 s")?
        .context("consumer ended")??;
    delivery.ack(BasicAckOptions::default()).await?;
    let text = String::from_utf8_lossy(&delivery.data).into_owned();
    connection.close(200, "done".into()).await?;
    Ok(text)
}

#[tokio::test]
async fn rabbit_stops_restarts_with_its_streams_and_dies_with_its_handle() -> anyhow::Result<()> {
    let clock = Instant::now();
    let mut rabbit = RabbitNode::start().await?;
    eprintln!("rabbit {} start: {:?}", rabbit.node_name(), clock.elapsed());
    let addr = rabbit.addr();
    assert_ne!(addr.port(), 5672);
    assert_eq!(rabbit.url(), format!("amqp://guest:guest@127.0.0.1:{}/%2f", addr.port()));
    assert_eq!(amqp_hello(addr).await?, 1, "no Connection.Start");
    let queue = testkit::unique("services-test");
    publish(&rabbit.url(), &queue, "before the restart").await?;

    let clock = Instant::now();
    rabbit.stop().await?;
    eprintln!("rabbit stop: {:?}", clock.elapsed());
    assert!(refused(addr).await, "AMQP port still open after stop");

    let clock = Instant::now();
    rabbit.start_again().await?;
    eprintln!("rabbit start_again: {:?}", clock.elapsed());
    assert_eq!(amqp_hello(addr).await?, 1, "no Connection.Start after the restart");
    // A stream is back a moment after its node: until then the broker says
    // its home node is down (NOT_FOUND), as a client that retries sees.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        match first(&rabbit.url(), &queue).await {
            Ok(text) => break text,
            Err(error) if Instant::now() < deadline => {
                eprintln!("stream not back yet: {error}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(error) => return Err(error),
        }
    };
    assert_eq!(text, "before the restart");

    let pid = rabbit.pid().context("no pid")?;
    assert!(alive(pid).await);
    drop(rabbit);
    assert!(!alive(pid).await, "beam.smp {pid} survived its handle");
    assert!(refused(addr).await);
    Ok(())
}
