//! Kleppmann's scenario against a fenced resource, on local Redis servers
//! (three lock nodes and one for the resource): A takes the lock and
//! writes, then pauses past its validity (a GC pause, a stopped VM); B takes
//! the lock and writes; A wakes up and writes again. The store refuses A's
//! late write, because B's fence is higher.
//!
//! ```sh
//! cargo run -p redlock-wasm --features local --example fenced_store
//! ```

mod store;

use std::time::Duration;

use redlock_wasm::Redlock;
use redlock_wasm::local::{LocalCluster, LocalNode};
use store::{FencedStore, Write};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let nodes = LocalCluster::start(3)?;
    let resource = LocalNode::start()?;
    let store = FencedStore::connect(&resource.url()).await?;
    let manager = || {
        Redlock::builder()
            .nodes(nodes.urls())
            .ttl(Duration::from_millis(500))
            .fencing(true)
            .build()
    };
    let (a, b) = (manager()?, manager()?);

    let lock_a = a.acquire("invoice:42", Duration::from_secs(2)).await?;
    let fence_a = lock_a.fence().expect("fencing is on");
    let first = store.write("invoice:42", fence_a, "written by A").await?;
    println!("A holds the lock, fence {fence_a}; its write: {first:?}");

    let pause = lock_a.remaining() + Duration::from_millis(100);
    println!("A pauses for {} ms, past its validity", pause.as_millis());
    let paused = tokio::time::sleep(pause);

    let lock_b = b.acquire("invoice:42", Duration::from_secs(2)).await?;
    let fence_b = lock_b.fence().expect("fencing is on");
    let second = store.write("invoice:42", fence_b, "written by B").await?;
    println!("B holds the lock, fence {fence_b}; its write: {second:?}");

    paused.await;
    let late = store
        .write("invoice:42", fence_a, "written by A, late")
        .await?;
    match late {
        Write::Refused { highest } => {
            println!(
                "A wakes up and writes with fence {fence_a}: refused (the store has seen {highest})"
            )
        }
        Write::Accepted => println!("A's late write was accepted: the store does not fence"),
    }
    println!("the store holds: {:?}", store.read("invoice:42").await?);
    b.release(&lock_b).await?;
    if let Err(e) = a.release(&lock_a).await {
        println!("A's release: {e}");
    }
    Ok(())
}
