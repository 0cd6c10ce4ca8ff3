//! A resource that checks fences (docs/FENCING.md, "Using a fence"): records
//! kept on a Redis server of their own, each written by one Lua script that
//! compares the writer's fence with the highest the record has accepted and
//! writes only if it is not lower. A holder that paused past its validity
//! then cannot overwrite what its successor wrote.
//!
//! The same rule for a SQL table: `UPDATE records SET data = $1, fence = $2
//! WHERE name = $3 AND fence <= $2`, and zero rows updated means refused.

use redis::aio::MultiplexedConnection;
use redis::{RedisResult, Script};

/// The check and the write in one atomic step. KEYS[1]: the record, a hash
/// of `fence` and `data`. ARGV[1]: the writer's fence; ARGV[2]: the data.
/// `{1, fence}` when written (an equal fence too: one holder may write
/// several times), `{0, highest}` when refused.
const WRITE: &str = r#"
local highest = tonumber(redis.call("HGET", KEYS[1], "fence") or "0")
local fence = tonumber(ARGV[1])
if fence < highest then
    return {0, highest}
end
redis.call("HSET", KEYS[1], "fence", ARGV[1], "data", ARGV[2])
return {1, fence}
"#;

/// What the store did with a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Write {
    /// Written: the fence was at least the highest seen.
    Accepted,
    /// Refused: the record has accepted a higher fence.
    Refused {
        /// The highest fence the record has accepted.
        highest: u64,
    },
}

/// Records that accept a write only with a fence at least as high as the
/// highest they have seen.
#[derive(Clone)]
pub struct FencedStore {
    conn: MultiplexedConnection,
    write: Script,
}

impl FencedStore {
    /// The store on the Redis server at `url` (not one of the lock's nodes).
    pub async fn connect(url: &str) -> RedisResult<Self> {
        let conn = redis::Client::open(url)?
            .get_multiplexed_async_connection()
            .await?;
        Ok(FencedStore {
            conn,
            write: Script::new(WRITE),
        })
    }

    /// Writes `data` to `record` with the writer's `fence`, unless the record
    /// has accepted a higher fence.
    pub async fn write(&self, record: &str, fence: u64, data: &str) -> RedisResult<Write> {
        let (written, highest): (u8, u64) = self
            .write
            .key(record)
            .arg(fence)
            .arg(data)
            .invoke_async(&mut self.conn.clone())
            .await?;
        Ok(match written {
            1 => Write::Accepted,
            _ => Write::Refused { highest },
        })
    }

    /// The record's highest accepted fence and its data, if it was written.
    pub async fn read(&self, record: &str) -> RedisResult<Option<(u64, String)>> {
        let (fence, data): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(record)
            .arg("fence")
            .arg("data")
            .query_async(&mut self.conn.clone())
            .await?;
        Ok(fence.zip(data))
    }
}
