use super::*;
use tokio::net::{TcpListener, TcpStream};

struct Running {
    dir: tempfile::TempDir,
    pins: tempfile::TempDir,
    addr: SocketAddr,
    events: mpsc::Receiver<Event>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// An instance holding one listener on loopback, its hand-over socket
/// published.
async fn running() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let pins = tempfile::tempdir().unwrap();
    let held = HeldListener::from_tokio(TcpListener::bind("127.0.0.1:0").await.unwrap()).unwrap();
    let addr = held.addr();
    let server = Server::bind(dir.path()).unwrap();
    server.publish().unwrap();
    let (tx, events) = mpsc::channel(8);
    let me = Identity::new(pins.path(), 4242).unwrap();
    let task = tokio::spawn(server.serve(Arc::new(vec![held]), me, tx));
    Running {
        dir,
        pins,
        addr,
        events,
        task,
    }
}

async fn next(events: &mut mpsc::Receiver<Event>) -> Event {
    timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an event")
        .expect("the channel is open")
}

#[tokio::test]
async fn a_successor_takes_the_very_same_socket() {
    let mut old = running().await;
    let (predecessor, listeners) = acquire(old.dir.path(), old.pins.path(), &[old.addr])
        .await
        .unwrap();
    let predecessor = predecessor.expect("the running instance answered");
    assert_eq!(predecessor.cgroup, 4242);
    assert_eq!(predecessor.pid, Some(std::process::id() as i32));
    assert_eq!(next(&mut old.events).await, Event::Offered);
    // A connection queued on the old socket is accepted through the new one.
    let client = TcpStream::connect(old.addr).await.unwrap();
    let (_, peer) = listeners[0].serve().unwrap().accept().await.unwrap();
    assert_eq!(peer, client.local_addr().unwrap());
    predecessor.confirm().await.unwrap();
    assert_eq!(next(&mut old.events).await, Event::Completed);
    // It answers no one after that, and holds on (a supervised task).
    assert!(!old.task.is_finished());
}

#[tokio::test]
async fn a_successor_that_goes_away_changes_nothing() {
    let mut old = running().await;
    let (predecessor, listeners) = acquire(old.dir.path(), old.pins.path(), &[old.addr])
        .await
        .unwrap();
    assert_eq!(next(&mut old.events).await, Event::Offered);
    drop((predecessor, listeners));
    assert!(matches!(next(&mut old.events).await, Event::Aborted(_)));
    // The next one is answered.
    let (predecessor, _) = acquire(old.dir.path(), old.pins.path(), &[old.addr])
        .await
        .unwrap();
    assert!(predecessor.is_some());
    assert_eq!(next(&mut old.events).await, Event::Offered);
}

#[tokio::test]
async fn another_pin_directory_is_refused() {
    let mut old = running().await;
    let other = tempfile::tempdir().unwrap();
    let err = acquire(old.dir.path(), other.path(), &[old.addr])
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("refuses to hand over: pins="),
        "{err:#}"
    );
    assert!(old.events.try_recv().is_err(), "nothing was offered");
}

#[tokio::test]
async fn with_nobody_to_take_over_from_it_binds() {
    let dir = tempfile::tempdir().unwrap();
    let pins = tempfile::tempdir().unwrap();
    // A stale socket file (its instance was killed) is nobody.
    std::os::unix::net::UnixListener::bind(dir.path().join(SOCKET)).unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let (predecessor, listeners) = acquire(dir.path(), pins.path(), &[free]).await.unwrap();
    assert!(predecessor.is_none());
    assert_eq!(listeners[0].addr(), free);
}

#[tokio::test]
async fn an_address_held_by_another_program_is_an_error_that_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let pins = tempfile::tempdir().unwrap();
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let err = acquire_within(dir.path(), pins.path(), &[addr], Duration::from_millis(300))
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("address in use") && text.contains("handover.sock"),
        "{text}"
    );
}

#[test]
fn malformed_lines_are_refused() {
    assert_eq!(
        parse_hello("redirector-handover 1 pins=/sys/fs/bpf/my dir").unwrap(),
        (1, PathBuf::from("/sys/fs/bpf/my dir"))
    );
    for bad in [
        "",
        "redirector-handover",
        "redirector-handover x pins=/a",
        "hello 1 pins=/a",
    ] {
        assert!(parse_hello(bad).is_err(), "{bad}");
    }
    assert_eq!(parse_offer("offer 1 cgroup=7 listeners=3").unwrap(), (7, 3));
    for bad in [
        "offer 2 cgroup=7 listeners=3",
        "offer 1 listeners=3",
        "offer 1 cgroup=x listeners=1",
    ] {
        assert!(parse_offer(bad).is_err(), "{bad}");
    }
}
