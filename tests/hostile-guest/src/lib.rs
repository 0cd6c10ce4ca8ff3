//! A component with the lock core's world that misbehaves on purpose, for
//! the host's sandbox tests. `acquire`'s key picks the misbehaviour:
//!
//! - `spin`: an infinite loop;
//! - `alloc`: allocates without bound;
//! - `imports`: calls an import in a tight loop forever;
//! - `leak`: creates pending replies forever and never drops them;
//! - `forget`: leaves three pending replies alive and returns;
//! - anything else: returns `invalid-argument` at once (a benign call).

#[cfg(target_arch = "wasm32")]
mod component {
    wit_bindgen::generate!({
        world: "lock-core",
        path: "../../wit",
        generate_all,
    });

    use exports::redlock::core::redlock as api;
    use redlock::core::redis_node as node;

    struct Hostile;

    impl api::Guest for Hostile {
        fn acquire(
            key: String,
            _options: api::Options,
            _budget_ms: Option<u64>,
        ) -> Result<api::Lock, api::Error> {
            match key.as_str() {
                "spin" => {
                    let mut x: u64 = 0;
                    loop {
                        x = std::hint::black_box(x.wrapping_add(1));
                    }
                }
                "alloc" => {
                    let mut hoard: Vec<Vec<u8>> = Vec::new();
                    loop {
                        hoard.push(std::hint::black_box(vec![1u8; 1 << 20]));
                    }
                }
                "imports" => loop {
                    std::hint::black_box(node::node_count());
                },
                "leak" => loop {
                    std::mem::forget(node::set_if_absent(0, "leak", "t", 1000));
                },
                "forget" => {
                    for i in 0..3 {
                        std::mem::forget(node::set_if_absent(i, "forget", "t", 1000));
                    }
                    Err(api::Error::InvalidArgument(
                        "left pending replies behind".into(),
                    ))
                }
                _ => Err(api::Error::InvalidArgument("benign".into())),
            }
        }

        fn release(_lock: api::Lock, _budget_ms: Option<u64>) -> Result<(), api::Error> {
            Err(api::Error::InvalidArgument("benign".into()))
        }

        fn extend(
            _lock: api::Lock,
            _ttl_ms: u64,
            _budget_ms: Option<u64>,
        ) -> Result<api::Lock, api::Error> {
            Err(api::Error::InvalidArgument("benign".into()))
        }
    }

    export!(Hostile);
}
