//! Just enough RESP2 for the bus: commands out, and replies in, parsed
//! from a buffer that may hold part of a reply. Written here rather than
//! taken from redis-rs because its parser reads from a blocking socket, and
//! a writer (see [`super::writer`]) reads from a non-blocking one inside an
//! event loop; and because the reader, whose `XREAD` replies are the bus's
//! hot path, spent about 1 µs per entry in redis-rs's parser building an
//! owned `redis::Value` tree. [`parse`] is the writers' (single replies);
//! [`parse_nested`] the reader's (arrays too, borrowed from the input: no
//! string is copied until an entry is decoded into its publish).
//!
//! Nothing from Redis is trusted: a reply of a kind the caller never asks
//! for, a malformed length, a size or depth over the bounds below, or a
//! line without its end is an error, and the caller drops the connection.
//! No input can make it panic.

/// Longest reply accepted, line or bulk string: the replies to `XADD`,
/// `AUTH`, `SELECT` and `PING` are a few dozen bytes, error texts a few
/// hundred; anything longer is not one of them.
pub(super) const MAX_REPLY: usize = 64 * 1024;

/// Longest bulk string in a nested reply (the reader's): Redis's own
/// bound (`proto-max-bulk-len`). A stream entry's field may be that long;
/// the reader must read it whole to skip its entry (see `MAX_MESSAGE_BYTES`).
pub(super) const MAX_BULK: usize = 512 * 1024 * 1024;
/// Most elements in one array of a nested reply: an `XREAD` page of
/// `PAGE` entries needs a few hundred.
pub(super) const MAX_ELEMENTS: usize = 1 << 20;
/// Deepest nesting of arrays: `XREAD`'s reply is 4 deep, `XINFO STREAM`'s 3.
pub(super) const MAX_DEPTH: usize = 8;

/// One reply (RESP2), borrowed from the input. The writers' replies are
/// never arrays ([`parse`]); the reader's may nest ([`parse_nested`]).
#[derive(Debug, PartialEq, Eq, Clone)]
pub(super) enum Value<'a> {
    SimpleString(&'a [u8]),
    /// `-ERR ...`: only ever expected at the top (the command was refused).
    Error(&'a [u8]),
    Int(i64),
    BulkString(&'a [u8]),
    /// `$-1` or `*-1`.
    Nil,
    Array(Vec<Value<'a>>),
}

/// The first reply in `input` and how many bytes it took; `None` if `input`
/// holds only part of one. An array is refused: the writers never ask for one.
pub(super) fn parse(input: &[u8]) -> Result<Option<(Value<'_>, usize)>, String> {
    match input.first() {
        // Checked first, so that no line ending is awaited for a reply that is refused anyway.
        Some(&kind) if !b"+-:$".contains(&kind) => Err(unexpected(kind)),
        _ => scalar(input, MAX_REPLY),
    }
}

/// Like [`parse`], arrays and nested arrays included, within [`MAX_BULK`],
/// [`MAX_ELEMENTS`] and [`MAX_DEPTH`]. A reply cut short is parsed again
/// from its start once more has come: a bulk string is skipped by its
/// length, so that costs a look at each element's header, not each byte.
pub(super) fn parse_nested(input: &[u8]) -> Result<Option<(Value<'_>, usize)>, String> {
    nested(input, 0)
}

fn nested(input: &[u8], depth: usize) -> Result<Option<(Value<'_>, usize)>, String> {
    let Some(&kind) = input.first() else { return Ok(None) };
    if kind != b'*' {
        if !b"+-:$".contains(&kind) {
            return Err(unexpected(kind));
        }
        return scalar(input, MAX_BULK);
    }
    let Some((line, mut at)) = line(input)? else { return Ok(None) };
    let len = match integer(line)? {
        -1 => return Ok(Some((Value::Nil, at))),
        len if (0..=MAX_ELEMENTS as i64).contains(&len) => len as usize,
        _ => return Err("an array length out of bounds".to_owned()),
    };
    if depth >= MAX_DEPTH {
        return Err("a reply nested too deep".to_owned());
    }
    // Not the whole length at once: it is only a claim until the elements come.
    let mut items = Vec::with_capacity(len.min(256));
    for _ in 0..len {
        let Some((item, used)) = nested(&input[at..], depth + 1)? else { return Ok(None) };
        items.push(item);
        at += used;
    }
    Ok(Some((Value::Array(items), at)))
}

/// How many bytes the first reply in `input` takes, as [`parse_nested`]
/// would parse it, without building it; `None` if `input` holds only part.
pub(super) fn reply_len(input: &[u8]) -> Result<Option<usize>, String> {
    skip(input, 0)
}

fn skip(input: &[u8], depth: usize) -> Result<Option<usize>, String> {
    if input.first() != Some(&b'*') {
        return Ok(scalar(input, MAX_BULK)?.map(|(_, used)| used));
    }
    let Some((line, mut at)) = line(input)? else { return Ok(None) };
    let len = match integer(line)? {
        -1 => return Ok(Some(at)),
        len if (0..=MAX_ELEMENTS as i64).contains(&len) => len as usize,
        _ => return Err("an array length out of bounds".to_owned()),
    };
    if depth >= MAX_DEPTH {
        return Err("a reply nested too deep".to_owned());
    }
    for _ in 0..len {
        let Some(used) = skip(&input[at..], depth + 1)? else { return Ok(None) };
        at += used;
    }
    Ok(Some(at))
}

/// The line after `input`'s type byte, and the offset just after its end.
fn line(input: &[u8]) -> Result<Option<(&[u8], usize)>, String> {
    let rest = input.get(1..).unwrap_or_default();
    let window = &rest[..rest.len().min(MAX_REPLY)];
    let Some(eol) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if rest.len() >= MAX_REPLY { Err("a reply line is too long".to_owned()) } else { Ok(None) };
    };
    Ok(Some((&rest[..eol], 1 + eol + 2)))
}

/// One reply that is not an array, with bulk strings of at most `max_bulk` bytes.
fn scalar(input: &[u8], max_bulk: usize) -> Result<Option<(Value<'_>, usize)>, String> {
    let Some(&kind) = input.first() else { return Ok(None) };
    if !b"+-:$".contains(&kind) {
        return Err(unexpected(kind));
    }
    let Some((line, after)) = line(input)? else { return Ok(None) };
    let reply = match kind {
        b'+' => Value::SimpleString(line),
        b'-' => Value::Error(line),
        b':' => Value::Int(integer(line)?),
        b'$' => match integer(line)? {
            -1 => Value::Nil,
            len if (0..=max_bulk as i64).contains(&len) => {
                let end = after + len as usize;
                let Some(tail) = input.get(end..end + 2) else { return Ok(None) };
                if tail != b"\r\n" {
                    return Err("a bulk string does not end where its length says".to_owned());
                }
                return Ok(Some((Value::BulkString(&input[after..end]), end + 2)));
            }
            _ => return Err("a bulk string length out of bounds".to_owned()),
        },
        _ => return Err(unexpected(kind)),
    };
    Ok(Some((reply, after)))
}

fn unexpected(kind: u8) -> String {
    format!("a reply of unexpected type {:?}", char::from(kind))
}

/// A RESP integer: an optional `-`, then 1 to 18 ASCII digits (so it fits).
fn integer(line: &[u8]) -> Result<i64, String> {
    let digits = line.strip_prefix(b"-").unwrap_or(line);
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err("a malformed integer in a reply".to_owned());
    }
    let value = digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Ok(if digits.len() < line.len() { -value } else { value })
}

/// Starts a command of `args` arguments (its name included) in `out`.
pub(super) fn command(out: &mut Vec<u8>, args: usize) {
    out.push(b'*');
    decimal(out, args);
    out.extend_from_slice(b"\r\n");
}

/// One argument of a command.
pub(super) fn arg(out: &mut Vec<u8>, bytes: &[u8]) {
    arg_joined(out, std::slice::from_ref(&bytes), b',');
}

/// One argument made of `parts` joined by `separator`, without building it first.
pub(super) fn arg_joined<S: AsRef<[u8]>>(out: &mut Vec<u8>, parts: &[S], separator: u8) {
    let len = parts.iter().map(|part| part.as_ref().len()).sum::<usize>() + parts.len().saturating_sub(1);
    out.push(b'$');
    decimal(out, len);
    out.extend_from_slice(b"\r\n");
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            out.push(separator);
        }
        out.extend_from_slice(part.as_ref());
    }
    out.extend_from_slice(b"\r\n");
}

fn decimal(out: &mut Vec<u8>, mut n: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_parse_whole_or_wait_for_more() {
        assert_eq!(parse(b"+OK\r\n+PONG"), Ok(Some((Value::SimpleString(b"OK"), 5))));
        assert_eq!(parse(b"-ERR no\r\n"), Ok(Some((Value::Error(b"ERR no"), 9))));
        assert_eq!(parse(b":-12\r\n"), Ok(Some((Value::Int(-12), 6))));
        assert_eq!(parse(b"$3\r\n1-2\r\n:1"), Ok(Some((Value::BulkString(b"1-2"), 9))));
        assert_eq!(parse(b"$0\r\n\r\n"), Ok(Some((Value::BulkString(b""), 6))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Value::Nil, 5))));
        let whole = b"$15\r\n1700000000000-0\r\n";
        for cut in 0..whole.len() {
            assert_eq!(parse(&whole[..cut]), Ok(None), "a reply cut at {cut}");
        }
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bad in [
            &b"*1\r\n$1\r\nx\r\n"[..],
            b"\r\n",
            b"%1\r\n",
            b">2\r\n",
            b"_\r\n",
            b":\r\n",
            b":1x\r\n",
            b":-\r\n",
            b":99999999999999999999\r\n",
            b"$-2\r\n",
            b"$x\r\n",
            b"$3\r\nabcd\r\n",
            b"$70000\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long = vec![b'+'; MAX_REPLY + 2];
        assert!(parse(&long).is_err());
        assert_eq!(parse(&long[..MAX_REPLY]), Ok(None));
    }

    /// An `XREAD` page as Redis sends it: one stream, two entries.
    const XREAD: &[u8] = b"*1\r\n*2\r\n$6\r\nevents\r\n*2\r\n\
        *2\r\n$3\r\n1-1\r\n*4\r\n$4\r\ndata\r\n$2\r\nhi\r\n$6\r\ntopics\r\n$3\r\na,b\r\n\
        *2\r\n$3\r\n2-0\r\n*0\r\n";

    #[test]
    fn nested_replies_parse_borrowed() {
        let (value, used) = parse_nested(XREAD).unwrap().unwrap();
        assert_eq!(used, XREAD.len());
        let entries = Value::Array(vec![
            Value::Array(vec![
                Value::BulkString(b"1-1"),
                Value::Array(
                    [b"data".as_slice(), b"hi", b"topics", b"a,b"].into_iter().map(Value::BulkString).collect(),
                ),
            ]),
            Value::Array(vec![Value::BulkString(b"2-0"), Value::Array(vec![])]),
        ]);
        assert_eq!(value, Value::Array(vec![Value::Array(vec![Value::BulkString(b"events"), entries])]));
        assert_eq!(parse_nested(b"*-1\r\n"), Ok(Some((Value::Nil, 5))), "XREAD BLOCK timed out");
        assert_eq!(parse_nested(b"$-1\r\n"), Ok(Some((Value::Nil, 5))));
        assert_eq!(parse_nested(b"-ERR x\r\n"), Ok(Some((Value::Error(b"ERR x"), 8))));
        assert_eq!(parse_nested(b":7\r\n+OK\r\n"), Ok(Some((Value::Int(7), 4))));
        let mut two = XREAD.to_vec();
        two.extend_from_slice(b"+PONG\r\n");
        assert_eq!(reply_len(&two), Ok(Some(XREAD.len())), "a reply ends where it ends");
        for cut in 0..XREAD.len() {
            assert_eq!(parse_nested(&XREAD[..cut]), Ok(None), "a reply cut at {cut}");
            assert_eq!(reply_len(&XREAD[..cut]), Ok(None), "a reply cut at {cut}");
        }
    }

    #[test]
    fn malformed_nested_replies_are_errors_not_panics() {
        let deep = [b"*1\r\n".repeat(MAX_DEPTH + 1), b":1\r\n".to_vec()].concat();
        let over = format!("*{}\r\n", MAX_ELEMENTS + 1);
        let big = format!("*1\r\n${}\r\n", MAX_BULK + 1);
        for bad in [
            &b"*-2\r\n"[..],
            b"*x\r\n",
            b"*\r\n",
            over.as_bytes(),
            big.as_bytes(),
            &deep,
            b"*2\r\n:1\r\n%1\r\n",
            b"*1\r\n$3\r\nabcd\r\n",
            b"*1\r\n$-2\r\n",
            b">1\r\n",
            b"\r\n",
        ] {
            assert!(parse_nested(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
            assert!(reply_len(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let fits = [b"*1\r\n".repeat(MAX_DEPTH), b":1\r\n".to_vec()].concat();
        assert!(matches!(parse_nested(&fits), Ok(Some(_))), "as deep as allowed");
        // A length is only a claim: nothing is set aside for it before its elements come.
        let claim = format!("*{MAX_ELEMENTS}\r\n:1\r\n");
        assert_eq!(parse_nested(claim.as_bytes()), Ok(None));
        let claim = format!("${MAX_BULK}\r\nabc");
        assert_eq!(parse_nested(claim.as_bytes()), Ok(None));
    }

    #[test]
    fn any_corruption_of_a_nested_reply_is_handled_alike_by_both() {
        for at in 0..XREAD.len() {
            for byte in [b'*', b'$', b':', b'-', b'0', b'9', b'\r', b'\n', b'x', 0xff] {
                let mut input = XREAD.to_vec();
                input[at] = byte;
                for cut in [input.len(), at + 1] {
                    let input = &input[..cut];
                    let parsed = parse_nested(input).map(|done| done.map(|(_, used)| used));
                    assert_eq!(parsed, reply_len(input), "byte {at} set to {byte}, cut at {cut}");
                }
            }
        }
    }

    #[test]
    fn commands_encode_as_redis_rs_packs_them() {
        let mut out = Vec::new();
        command(&mut out, 4);
        arg(&mut out, b"XADD");
        arg(&mut out, b"");
        arg_joined(&mut out, &["a", "bc"], b',');
        arg_joined(&mut out, &["x".repeat(1234)], b',');
        let packed = redis::cmd("XADD").arg("").arg("a,bc").arg("x".repeat(1234)).get_packed_command();
        assert_eq!(out, packed);
    }
}
