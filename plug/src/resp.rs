//! RESP2: the command encoder and a bounded, incremental reply parser.
//!
//! The parser never blocks and never trusts a length it has not checked: a
//! line longer than [`MAX_LINE`] or a bulk string longer than [`MAX_BULK`] is
//! an error at once, before the bytes arrive. Arrays other than the nil array
//! are refused outright: no command sent here is answered with one, and
//! refusing them keeps the work per reply linear. The caller additionally caps
//! its buffer at [`MAX_BUFFERED`]. A malformed reply breaks the connection
//! (the stream cannot be resynchronised); it never traps.

use std::fmt;

/// Longest simple-string, error or integer line accepted, CRLF excluded.
pub const MAX_LINE: usize = 8 * 1024;
/// Longest bulk string accepted.
pub const MAX_BULK: usize = 64 * 1024;
/// Most reply bytes a connection buffers before it is declared broken.
pub const MAX_BUFFERED: usize = 1024 * 1024;

/// A reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Vec<u8>),
    /// `$-1`, `*-1` or RESP3 `_`.
    Nil,
}

/// Why the byte stream is not a valid reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError(pub String);

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn err<T>(msg: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(msg.into()))
}

/// Appends `args` as one RESP command (an array of bulk strings).
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are
/// needed, else the reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, ParseError> {
    let Some(&kind) = buf.first() else {
        return Ok(None);
    };
    let Some((line, after)) = line(&buf[1..])? else {
        return Ok(None);
    };
    let after = after + 1;
    let text = || {
        std::str::from_utf8(line)
            .map(str::to_owned)
            .or_else(|_| err("reply line is not UTF-8"))
    };
    match kind {
        b'+' => Ok(Some((Value::Simple(text()?), after))),
        b'-' => Ok(Some((Value::Error(text()?), after))),
        b':' => Ok(Some((Value::Integer(integer(line)?), after))),
        b'_' if line.is_empty() => Ok(Some((Value::Nil, after))),
        b'$' => {
            let len = integer(line)?;
            if len == -1 {
                return Ok(Some((Value::Nil, after)));
            }
            let len = usize::try_from(len).or_else(|_| err("negative bulk length"))?;
            if len > MAX_BULK {
                return err(format!("bulk reply of {len} bytes exceeds {MAX_BULK}"));
            }
            let end = after + len;
            if buf.len() < end + 2 {
                return Ok(None);
            }
            if &buf[end..end + 2] != b"\r\n" {
                return err("bulk reply not terminated by CRLF");
            }
            Ok(Some((Value::Bulk(buf[after..end].to_vec()), end + 2)))
        }
        b'*' if integer(line)? == -1 => Ok(Some((Value::Nil, after))),
        b'*' => err("array reply: none of the commands sent expects one"),
        other => err(format!(
            "unexpected reply type byte 0x{other:02x}: not a RESP2 reply"
        )),
    }
}

/// The bytes up to CRLF and the offset just past it.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, ParseError> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some((&buf[..i], i + 2))),
        None if buf.len() >= MAX_LINE + 2 => err(format!("reply line longer than {MAX_LINE}")),
        None if window.contains(&b'\n') => err("bare LF in reply line"),
        None => Ok(None),
    }
}

fn integer(line: &[u8]) -> Result<i64, ParseError> {
    std::str::from_utf8(line)
        .ok()
        .filter(|s| !s.is_empty() && s.len() <= 20)
        .and_then(|s| s.parse().ok())
        .map_or_else(|| err("malformed integer in reply"), Ok)
}

/// What a request expects back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// The compare-and-set/delete/extend scripts: 1 is done, 0 is refused.
    OneOrZero,
    /// The fenced scripts: a fence counter (> 0) is done, 0 is refused.
    Fence,
    /// Connection set-up (`AUTH`, `SELECT`): `+OK`.
    Ok,
    /// `SET ... NX`: `+OK` is done, nil is refused.
    OkOrNil,
}

/// What a reply means for the request that expected it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Meaning {
    Done,
    Refused,
    /// Done, and the node's fence counter is now this value.
    Fence(u64),
    /// Redis answered with an error reply.
    RedisError(String),
    /// A well-formed reply no Redis sends to this command.
    Unexpected(String),
}

/// Interprets `value` as the answer to a request that expected `expect`.
pub fn interpret(expect: Expect, value: Value) -> Meaning {
    match (expect, value) {
        (_, Value::Error(e)) => Meaning::RedisError(e),
        (Expect::Ok | Expect::OkOrNil, Value::Simple(s)) if s == "OK" => Meaning::Done,
        (Expect::OkOrNil, Value::Nil) => Meaning::Refused,
        (Expect::OneOrZero, Value::Integer(1)) => Meaning::Done,
        (Expect::OneOrZero | Expect::Fence, Value::Integer(0)) => Meaning::Refused,
        (Expect::Fence, Value::Integer(v)) if v > 0 => Meaning::Fence(v as u64),
        (_, v) => Meaning::Unexpected(format!("unexpected reply {}", short(&v))),
    }
}

/// A reply shortened for an error message.
fn short(v: &Value) -> String {
    let mut s = format!("{v:?}");
    if s.len() > 80 {
        let mut cut = 77;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
        s.push_str("...");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(bytes: &[u8]) -> Value {
        let (v, used) = parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len(), "{bytes:?}");
        v
    }

    #[test]
    fn encodes_commands() {
        let mut out = Vec::new();
        encode(&mut out, &[b"SET", b"k", b"", b"NX"]);
        assert_eq!(out, b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n$2\r\nNX\r\n");
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(one(b"+OK\r\n"), Value::Simple("OK".into()));
        assert_eq!(one(b"-ERR x\r\n"), Value::Error("ERR x".into()));
        assert_eq!(one(b":-12\r\n"), Value::Integer(-12));
        assert_eq!(one(b"$-1\r\n"), Value::Nil);
        assert_eq!(one(b"*-1\r\n"), Value::Nil);
        assert_eq!(one(b"_\r\n"), Value::Nil);
        assert_eq!(one(b"$2\r\nhi\r\n"), Value::Bulk(b"hi".to_vec()));
        assert_eq!(one(b"$0\r\n\r\n"), Value::Bulk(Vec::new()));
    }

    #[test]
    fn every_prefix_of_a_reply_asks_for_more() {
        let replies: &[&[u8]] = &[b"+OK\r\n", b"$5\r\nhello\r\n", b":12\r\n", b"*-1\r\n"];
        for r in replies {
            for cut in 0..r.len() {
                assert_eq!(parse(&r[..cut]), Ok(None), "{r:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn pipelined_replies_come_apart() {
        let buf = b"+OK\r\n:0\r\n$-1\r\n-ERR no\r\n";
        let mut at = 0;
        let mut got = Vec::new();
        while let Some((v, used)) = parse(&buf[at..]).unwrap() {
            got.push(v);
            at += used;
        }
        assert_eq!(at, buf.len());
        assert_eq!(got.len(), 4);
    }

    #[test]
    fn refuses_malformed_and_oversized_replies_early() {
        let bad: &[&[u8]] = &[
            b"?what\r\n",
            b":12a\r\n",
            b":\r\n",
            b"$-2\r\n",
            b"$3\r\nabcde\r\n",
            b"*-5\r\n",
            b"+no cr\n",
            b"$99999999999\r\n",
            b"*100000\r\n",
            b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n:1\r\n",
            b"*2\r\n:1\r\n:2\r\n",
            b"+\xff\xfe\r\n",
        ];
        for b in bad {
            assert!(parse(b).is_err(), "{b:?} parsed");
        }
        // A line that never ends is refused once it is too long, not buffered.
        let long = vec![b'+'; MAX_LINE + 8];
        assert!(parse(&long).is_err());
        // A huge bulk is refused from its header alone.
        assert!(parse(format!("${}\r\n", MAX_BULK + 1).as_bytes()).is_err());
    }

    #[test]
    fn never_panics_on_arbitrary_bytes() {
        // A cheap deterministic fuzz: every byte string up to length 4 over
        // an alphabet of RESP-significant bytes, and pseudo-random longer ones.
        let alphabet = b"+-:$*_\r\n01-9a";
        let mut stack = vec![Vec::<u8>::new()];
        while let Some(s) = stack.pop() {
            let _ = parse(&s);
            if s.len() < 4 {
                for &b in alphabet {
                    let mut t = s.clone();
                    t.push(b);
                    stack.push(t);
                }
            }
        }
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..20_000 {
            let len = (x % 40) as usize;
            let s: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    alphabet[(x % alphabet.len() as u64) as usize]
                })
                .collect();
            let _ = parse(&s);
        }
    }

    #[test]
    fn interprets_replies_per_command() {
        use Meaning::*;
        let ok = || Value::Simple("OK".into());
        assert!(matches!(
            interpret(Expect::OneOrZero, Value::Nil),
            Unexpected(_)
        ));
        assert_eq!(interpret(Expect::OneOrZero, Value::Integer(1)), Done);
        assert_eq!(interpret(Expect::OneOrZero, Value::Integer(0)), Refused);
        assert_eq!(interpret(Expect::Ok, ok()), Done);
        assert_eq!(interpret(Expect::OkOrNil, ok()), Done);
        assert_eq!(interpret(Expect::OkOrNil, Value::Nil), Refused);
        assert!(matches!(
            interpret(Expect::OkOrNil, Value::Integer(1)),
            Unexpected(_)
        ));
        assert_eq!(interpret(Expect::Fence, Value::Integer(7)), Fence(7));
        assert_eq!(interpret(Expect::Fence, Value::Integer(0)), Refused);
        assert!(matches!(
            interpret(Expect::Fence, Value::Integer(-1)),
            Unexpected(_)
        ));
        assert!(matches!(interpret(Expect::Fence, ok()), Unexpected(_)));
        assert_eq!(
            interpret(Expect::OneOrZero, Value::Error("NOSCRIPT x".into())),
            RedisError("NOSCRIPT x".into())
        );
        assert!(matches!(interpret(Expect::OneOrZero, ok()), Unexpected(_)));
        assert!(matches!(
            interpret(Expect::Ok, Value::Integer(1)),
            Unexpected(_)
        ));
        assert!(matches!(
            interpret(Expect::Ok, Value::Bulk(vec![b'x'; 500])),
            Unexpected(m) if m.len() < 120
        ));
    }
}
