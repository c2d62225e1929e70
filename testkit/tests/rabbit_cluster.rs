//! A three-node RabbitMQ cluster keeps a stream through the crash of the node
//! leading it: 100 messages before the crash, 100 through a surviving node
//! after it, and all 200 read back in order from the start; the killed node
//! then rejoins.

use std::time::Duration;

use anyhow::{Context, ensure};
use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use testkit::rabbit_cluster::{NODES, RabbitCluster};
use tokio::time::{Instant, sleep, timeout};

/// Messages published before the crash, and as many after it.
const BATCH: usize = 100;
/// How long a client keeps trying to publish after the crash.
const FAILOVER: Duration = Duration::from_secs(60);
/// How long one confirm (or connect) may take before the client gives up on
/// that node.
const CONFIRM: Duration = Duration::from_secs(10);

fn body(index: usize) -> String {
    format!("message-{index:03}")
}

async fn connect(url: &str) -> anyhow::Result<Connection> {
    let connection = timeout(CONFIRM, Connection::connect(url, ConnectionProperties::default()))
        .await
        .with_context(|| format!("connect to {url}: no answer in {CONFIRM:?}"))??;
    Ok(connection)
}

async fn close(connection: &Connection) {
    let _ = timeout(Duration::from_secs(5), connection.close(200, "done".into())).await;
}

async fn confirming_channel(connection: &Connection) -> anyhow::Result<Channel> {
    let channel = timeout(CONFIRM, connection.create_channel()).await.context("create_channel timed out")??;
    timeout(CONFIRM, channel.confirm_select(ConfirmSelectOptions::default()))
        .await
        .context("confirm_select timed out")??;
    Ok(channel)
}

/// Declares the durable stream `queue`, replicated on all three nodes (as
/// 3.10 does by default; said explicitly).
async fn declare(channel: &Channel, queue: &str) -> anyhow::Result<()> {
    let mut arguments = FieldTable::default();
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("stream".into()));
    arguments.insert("x-initial-cluster-size".into(), AMQPValue::LongInt(3));
    let options = QueueDeclareOptions { durable: true, ..QueueDeclareOptions::default() };
    timeout(CONFIRM, channel.queue_declare(queue.into(), options, arguments))
        .await
        .context("queue_declare timed out")??;
    Ok(())
}

async fn publish(channel: &Channel, queue: &str, index: usize) -> anyhow::Result<lapin::PublisherConfirm> {
    Ok(channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            body(index).as_bytes(),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await?)
}

/// The first batch, through node 0: all published, then all confirms.
async fn publish_before(url: &str, queue: &str) -> anyhow::Result<()> {
    let connection = connect(url).await?;
    let channel = confirming_channel(&connection).await?;
    declare(&channel, queue).await?;
    let mut confirms = Vec::with_capacity(BATCH);
    for index in 0..BATCH {
        confirms.push(publish(&channel, queue, index).await?);
    }
    for (index, confirm) in confirms.into_iter().enumerate() {
        let confirmation = timeout(CONFIRM, confirm).await.with_context(|| format!("no confirm for {index}"))??;
        ensure!(confirmation.is_ack(), "message {index} nacked");
    }
    close(&connection).await;
    Ok(())
}

/// What the publisher saw after the crash.
#[derive(Debug, Default)]
struct Failover {
    /// From the kill to the first confirmed message.
    first_ack: Option<Duration>,
    /// Failed attempts (connect, channel, publish, confirm), in order.
    failures: Vec<String>,
}

/// The second batch, as a client would: one message at a time, each
/// confirmed before the next; on any failure it reconnects, to the next
/// surviving node in turn, and carries on from the unconfirmed message.
async fn publish_after(urls: &[String], queue: &str, killed_at: Instant) -> anyhow::Result<(usize, Failover)> {
    let mut seen = Failover::default();
    let mut next = BATCH;
    let deadline = killed_at + FAILOVER;
    for attempt in 0.. {
        ensure!(Instant::now() < deadline, "could not publish within {FAILOVER:?} of the crash: {:?}", seen.failures);
        let url = &urls[attempt % urls.len()];
        let outcome = async {
            let connection = connect(url).await?;
            let run = async {
                let channel = confirming_channel(&connection).await?;
                while next < 2 * BATCH {
                    let confirm = publish(&channel, queue, next).await?;
                    let confirmation =
                        timeout(CONFIRM, confirm).await.with_context(|| format!("no confirm for {next}"))??;
                    ensure!(confirmation.is_ack(), "message {next} nacked");
                    seen.first_ack.get_or_insert_with(|| killed_at.elapsed());
                    next += 1;
                }
                Ok(())
            };
            let result = run.await;
            close(&connection).await;
            result
        }
        .await;
        match outcome {
            Ok(()) => return Ok((attempt % urls.len(), seen)),
            Err(error) => {
                let note = format!("{:.1?} {url}: {error:#}", killed_at.elapsed());
                eprintln!("publish after the crash: {note}");
                seen.failures.push(note);
                sleep(Duration::from_millis(250)).await;
            }
        }
    }
    unreachable!("the loop returns or fails")
}

/// Reads the stream from its first offset through `url`: every message,
/// then checks nothing more comes within 2 s.
async fn read_all(url: &str, queue: &str) -> anyhow::Result<Vec<String>> {
    let connection = connect(url).await?;
    let channel = timeout(CONFIRM, connection.create_channel()).await.context("create_channel timed out")??;
    timeout(CONFIRM, channel.basic_qos(50, BasicQosOptions::default())).await.context("basic_qos timed out")??;
    let mut arguments = FieldTable::default();
    arguments.insert("x-stream-offset".into(), AMQPValue::LongString("first".into()));
    let mut consumer =
        timeout(CONFIRM, channel.basic_consume(queue.into(), "".into(), BasicConsumeOptions::default(), arguments))
            .await
            .context("basic_consume timed out")??;
    let mut bodies = Vec::with_capacity(2 * BATCH);
    let deadline = Instant::now() + Duration::from_secs(30);
    while bodies.len() < 2 * BATCH {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .with_context(|| format!("only {} messages within 30 s", bodies.len()))?
            .context("consumer ended")??;
        delivery.ack(BasicAckOptions::default()).await?;
        bodies.push(String::from_utf8_lossy(&delivery.data).into_owned());
    }
    if let Ok(extra) = timeout(Duration::from_secs(2), consumer.next()).await {
        let extra = extra.context("consumer ended")??;
        anyhow::bail!("a message beyond the {}: {:?}", 2 * BATCH, String::from_utf8_lossy(&extra.data));
    }
    close(&connection).await;
    Ok(bodies)
}

#[tokio::test]
async fn a_stream_survives_the_crash_of_its_leader() -> anyhow::Result<()> {
    let clock = Instant::now();
    let mut cluster = RabbitCluster::start().await?;
    eprintln!("cluster start: {:.1?}", clock.elapsed());
    let urls = cluster.urls();
    assert_eq!(urls.len(), NODES);
    assert!(cluster.management_url().is_some());
    for index in 0..NODES {
        assert_eq!(cluster.running_nodes(index).await?.len(), NODES, "node {index}'s view");
    }

    let queue = testkit::unique("cluster-stream");
    publish_before(&urls[0], &queue).await?;
    let leader = cluster.stream_leader(&queue).await?;
    eprintln!("{queue} is led by node {leader} ({})", cluster.nodes()[leader].node_name());

    let killed_at = Instant::now();
    cluster.kill_node(leader).await?;
    eprintln!("killed node {leader} in {:.1?}", killed_at.elapsed());
    let survivors: Vec<String> =
        (1..NODES).map(|step| (leader + step) % NODES).map(|index| urls[index].clone()).collect();

    // The client publishes while, beside it, we watch for the new leader.
    let watch = async {
        let deadline = killed_at + FAILOVER;
        loop {
            match cluster.stream_leader(&queue).await {
                Ok(index) => return Ok((index, killed_at.elapsed())),
                Err(error) if Instant::now() < deadline => {
                    eprintln!("{:.1?} no new leader yet: {error:#}", killed_at.elapsed());
                    sleep(Duration::from_millis(500)).await;
                }
                Err(error) => return Err(error),
            }
        }
    };
    let (published, elected) = tokio::join!(publish_after(&survivors, &queue, killed_at), watch);
    let (through, failover) = published?;
    let (new_leader, elected_after) = elected?;
    assert_ne!(new_leader, leader);
    eprintln!(
        "failover: new leader node {new_leader} seen after {elected_after:.1?}; first confirm after the crash at \
         {:.1?} (through {}), {} failed attempts before",
        failover.first_ack.context("no confirm")?,
        survivors[through],
        failover.failures.len(),
    );

    let bodies = read_all(&survivors[through], &queue).await?;
    let expected: Vec<String> = (0..2 * BATCH).map(body).collect();
    assert_eq!(bodies, expected, "the stream from its first offset");

    let clock = Instant::now();
    cluster.restart_node(leader).await?;
    eprintln!("restart of node {leader} until 3 running: {:.1?}", clock.elapsed());
    for index in 0..NODES {
        assert_eq!(cluster.running_nodes(index).await?.len(), NODES, "node {index}'s view after the restart");
    }
    Ok(())
}
