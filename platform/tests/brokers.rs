//! `VCAP_SERVICES` documents as the usual brokers write them (modelled on
//! their published examples; the passwords are made up), and the URL each
//! binary takes from them.

use platform::{Error, Kind};

macro_rules! fixture {
    ($name:literal) => {
        include_str!(concat!("fixtures/", $name, ".json"))
    };
}

fn redis(document: &str) -> (String, platform::Service) {
    let binding = platform::redis(document).expect("usable").expect("a Redis is bound");
    (binding.url().to_owned(), binding.service().clone())
}

fn rabbitmq(document: &str) -> (String, platform::Service) {
    let binding = platform::rabbitmq(document).expect("usable").expect("a RabbitMQ is bound");
    (binding.url().to_owned(), binding.service().clone())
}

#[test]
fn tanzu_redis_on_demand() {
    let (url, service) = redis(fixture!("p.redis"));
    let host = "q-s0.redis-instance.services.service-instance-1b9f3c4e-8a3d-4a1e-9f0e-6c2d5e7a8b90.bosh";
    assert_eq!(url, format!("redis://:xK2mP9qL7vR4tY8w@{host}:6379"));
    assert_eq!(
        service,
        platform::Service {
            name: "warren-redis".to_owned(),
            label: "p.redis".to_owned(),
            host: host.to_owned(),
            tls: false
        }
    );
}

#[test]
fn tanzu_redis_with_tls_prefers_the_tls_port() {
    let (url, service) = redis(fixture!("p.redis-tls"));
    assert!(url.starts_with("rediss://:Qw3rTy%2FuI+oP%3D9@q-s0.redis-instance."), "{url}");
    assert!(url.ends_with(".bosh:16379"), "{url}");
    assert!(service.tls);
}

#[test]
fn tanzu_redis_shared_vm() {
    let (url, service) = redis(fixture!("p-redis"));
    assert_eq!(url, "redis://:b8e3c1d2-7a6f-4e5d-9c8b-1a2f3e4d5c6b@10.0.4.10:39581");
    assert_eq!((service.label.as_str(), service.host.as_str()), ("p-redis", "10.0.4.10"));
}

#[test]
fn redis_cloud_gives_hostname_and_a_string_port() {
    let (url, service) = redis(fixture!("rediscloud"));
    assert_eq!(url, "redis://:Zx8Cv7Bn6Mm5@redis-12345.c10.us-east-1-2.ec2.cloud.redislabs.com:12345");
    assert_eq!(service.label, "rediscloud");
}

#[test]
fn a_user_provided_redis_is_known_by_its_uri() {
    let (url, service) = redis(fixture!("user-provided-redis"));
    assert_eq!(url, "redis://default:pr0vided@redis.example.net:6380/0");
    assert_eq!((service.name.as_str(), service.label.as_str()), ("external-redis", "user-provided"));
    assert_eq!(platform::rabbitmq(fixture!("user-provided-redis")).expect("valid"), None);
}

#[test]
fn tanzu_rabbitmq_on_demand() {
    let (url, service) = rabbitmq(fixture!("p.rabbitmq"));
    assert!(url.starts_with("amqp://b5d0ad14-4352-48e8-8982-d5b1d257029f:tavk86pnnns1ddiqpsdtbchurn@q-s0."), "{url}");
    assert!(url.ends_with(".bosh/62e5ab21-7b38-44ac-b139-6aa97af01cd7"), "the top-level uri comes first: {url}");
    assert!(!service.tls);
}

#[test]
fn tanzu_rabbitmq_with_tls_uses_amqps() {
    let (url, service) = rabbitmq(fixture!("p.rabbitmq-tls"));
    assert!(url.starts_with("amqps://8c1d2e3f-4a5b-4c6d-9e8f-7a6b5c4d3e2f:Lm4Nb5Vc6Xz7@q-s0."), "{url}");
    assert!(url.ends_with(":5671/4f1e2d3c-b4a5-4c6d-8e7f-9a0b1c2d3e4f"), "{url}");
    assert!(service.tls && service.host.starts_with("q-s0."));
}

#[test]
fn tanzu_rabbitmq_pre_provisioned_uses_its_first_node() {
    let (url, service) = rabbitmq(fixture!("p-rabbitmq"));
    assert_eq!(
        url,
        "amqp://b5d0ad14-4352-48e8-8982-d5b1d257029f:tavk86pnnns1ddiqpsdtbchurn@10.0.0.41/62e5ab21-7b38-44ac-b139-6aa97af01cd7"
    );
    assert_eq!(service.host, "10.0.0.41");
}

#[test]
fn cloudamqp_gives_a_uri_only() {
    let (url, service) = rabbitmq(fixture!("cloudamqp"));
    assert_eq!(url, "amqp://ksvyjmiv:IwN6dCdZmeQD4O0ZPKpu1YOaLx1he8wo@lemur.cloudamqp.com/ksvyjmiv");
    assert_eq!((service.label.as_str(), service.host.as_str()), ("cloudamqp", "lemur.cloudamqp.com"));
}

#[test]
fn one_document_serves_both_binaries() {
    let document = fixture!("app");
    assert_eq!(redis(document).1.name, "warren-redis");
    assert_eq!(rabbitmq(document).1.name, "warren-rabbitmq");
}

#[test]
fn brokers_of_the_other_kind_are_not_taken() {
    for document in [fixture!("p.redis"), fixture!("p-redis"), fixture!("rediscloud")] {
        assert_eq!(platform::rabbitmq(document).expect("valid"), None);
    }
    for document in [fixture!("p.rabbitmq"), fixture!("p-rabbitmq"), fixture!("cloudamqp")] {
        assert_eq!(platform::redis(document).expect("valid"), None);
    }
}

#[test]
fn two_redis_instances_are_refused_by_name() {
    let error = platform::redis(fixture!("two-redis")).expect_err("ambiguous");
    assert!(matches!(&error, Error::Ambiguous { kind: Kind::Redis, count: 2, names } if names == "sessions, cache"));
}

#[test]
fn no_error_or_service_shows_a_password() {
    let passwords = ["xK2mP9qL7vR4tY8w", "Zx8Cv7Bn6Mm5", "tavk86pnnns1ddiqpsdtbchurn", "a1", "b2"];
    let documents = [fixture!("p.redis"), fixture!("rediscloud"), fixture!("p.rabbitmq"), fixture!("two-redis")];
    for document in documents {
        let shown = [
            format!("{:?} {:?}", platform::redis(document), platform::rabbitmq(document)),
            platform::redis(document)
                .map_or_else(|e| e.to_string(), |b| format!("{:?}", b.map(|b| b.service().to_string()))),
        ];
        for text in shown {
            for password in passwords {
                assert!(
                    !text.contains(&format!(":{password}@")) && !text.contains(&format!("\"{password}\"")),
                    "{text}"
                );
            }
        }
    }
    // A binding whose credentials lack an address names the field, not a value.
    let broken = r#"{"p.redis": [{"name": "sessions", "credentials": {"password": "hunter2", "port": 6379}}]}"#;
    let message = platform::redis(broken).expect_err("no host").to_string();
    assert_eq!(message, "Redis service \"sessions\": credentials have neither uri nor host (or hostname)");
}
