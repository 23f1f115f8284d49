//! Just enough RESP2 for the bus's writers (see [`super::writer`]): commands
//! out, and the replies those commands get back in, parsed from a buffer
//! that may hold part of a reply. Written here rather than taken from
//! redis-rs because its parser reads from a blocking socket, and a writer
//! now reads from a non-blocking one inside an event loop.
//!
//! Nothing from Redis is trusted: a reply of a kind the writers never ask
//! for (an array, say), a malformed length or a line without its end is an
//! error, and the caller drops the connection. No input can make it panic.

/// Longest reply accepted, line or bulk string: the replies to `XADD`,
/// `AUTH`, `SELECT` and `PING` are a few dozen bytes, error texts a few
/// hundred; anything longer is not one of them.
pub(super) const MAX_REPLY: usize = 64 * 1024;

/// One reply, borrowed from the input.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Reply<'a> {
    /// `+OK`, `+PONG`.
    Simple(&'a [u8]),
    /// `-ERR ...`: the command was refused.
    Error(&'a [u8]),
    Integer(i64),
    Bulk(&'a [u8]),
    /// `$-1`.
    Nil,
}

/// The first reply in `input` and how many bytes it took; `None` if `input`
/// holds only part of one.
pub(super) fn parse(input: &[u8]) -> Result<Option<(Reply<'_>, usize)>, String> {
    let Some((&kind, rest)) = input.split_first() else { return Ok(None) };
    // Checked first, so that no line ending is awaited for a reply that is refused anyway.
    if !b"+-:$".contains(&kind) {
        return Err(unexpected(kind));
    }
    let window = &rest[..rest.len().min(MAX_REPLY)];
    let Some(eol) = window.windows(2).position(|pair| pair == b"\r\n") else {
        return if rest.len() >= MAX_REPLY { Err("a reply line is too long".to_owned()) } else { Ok(None) };
    };
    let line = &rest[..eol];
    // What follows the line, as an offset into `input`.
    let after = 1 + eol + 2;
    let reply = match kind {
        b'+' => Reply::Simple(line),
        b'-' => Reply::Error(line),
        b':' => Reply::Integer(integer(line)?),
        b'$' => match integer(line)? {
            -1 => Reply::Nil,
            len if (0..=MAX_REPLY as i64).contains(&len) => {
                let end = after + len as usize;
                let Some(tail) = input.get(end..end + 2) else { return Ok(None) };
                if tail != b"\r\n" {
                    return Err("a bulk string does not end where its length says".to_owned());
                }
                return Ok(Some((Reply::Bulk(&input[after..end]), end + 2)));
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
        assert_eq!(parse(b"+OK\r\n+PONG"), Ok(Some((Reply::Simple(b"OK"), 5))));
        assert_eq!(parse(b"-ERR no\r\n"), Ok(Some((Reply::Error(b"ERR no"), 9))));
        assert_eq!(parse(b":-12\r\n"), Ok(Some((Reply::Integer(-12), 6))));
        assert_eq!(parse(b"$3\r\n1-2\r\n:1"), Ok(Some((Reply::Bulk(b"1-2"), 9))));
        assert_eq!(parse(b"$0\r\n\r\n"), Ok(Some((Reply::Bulk(b""), 6))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Reply::Nil, 5))));
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
