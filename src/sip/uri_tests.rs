//! Unit tests of uri.rs: SIP URIs, name-addrs and list values.

use super::*;

fn ok(s: &str) -> SipUri {
    SipUri::parse(s).unwrap_or_else(|e| panic!("{s}: {e}"))
}

fn roundtrip(s: &str) -> String {
    let u = ok(s);
    let out = u.to_string();
    assert_eq!(ok(&out), u, "{s} -> {out}");
    out
}

#[test]
fn basic_uris() {
    let u = ok("sip:alice@Example.COM:5061;transport=TLS;lr");
    assert!(!u.secure);
    assert_eq!(u.user.as_deref(), Some("alice"));
    assert_eq!(u.host, "example.com");
    assert_eq!(u.port, Some(5061));
    assert_eq!(u.param("TRANSPORT"), Some(Some("TLS")));
    assert_eq!(u.param("lr"), Some(None));
    assert_eq!(u.param("maddr"), None);
    assert_eq!(u.to_string(), "sip:alice@example.com:5061;transport=TLS;lr");
    let s = ok("SIPS:example.com");
    assert!(s.secure);
    assert_eq!(s.user, None);
    assert_eq!(s.to_string(), "sips:example.com");
}

#[test]
fn other_schemes_are_scheme_errors() {
    for s in ["tel:+123", "http://x", "soap.beep://192.0.2.103:3002"] {
        assert_eq!(SipUri::parse(s), Err(UriError::Scheme), "{s}");
    }
    for s in ["nocolon", ":x"] {
        assert!(matches!(SipUri::parse(s), Err(UriError::Syntax(_))), "{s}");
    }
}

#[test]
fn whitespace_and_controls_refused() {
    for s in [
        "sip:a b@x.com",
        "sip:a@x.com; lr",
        "sip:a@x.com\t",
        "sip:\u{e9}@x.com",
    ] {
        assert!(SipUri::parse(s).is_err(), "{s}");
    }
}

#[test]
fn user_escapes_decoded_and_reencoded() {
    let u = ok("sip:%75se%72@example.com");
    assert_eq!(u.user.as_deref(), Some("user"));
    assert_eq!(u.to_string(), "sip:user@example.com");
    let u = ok("sip:sips%3Auser%40example.com@example.net");
    assert_eq!(u.user.as_deref(), Some("sips:user@example.com"));
    assert_eq!(
        roundtrip("sip:sips%3Auser%40example.com@example.net"),
        "sip:sips%3Auser%40example.com@example.net"
    );
    let u = ok("sip:I%20have%20spaces@example.net");
    assert_eq!(u.user.as_deref(), Some("I have spaces"));
    // RFC 4475 semiuri: ';' and '=' are legal in the user part.
    let u = ok("sip:user;par=u%40example.net@example.com");
    assert_eq!(u.user.as_deref(), Some("user;par=u@example.net"));
    assert!(u.params.is_empty());
    roundtrip("sip:user;par=u%40example.net@example.com");
}

#[test]
fn bad_escapes_refused() {
    for s in [
        "sip:%00@example.com",
        "sip:null-%00-null@example.com",
        "sip:a%0D%0Ab@example.com",
        "sip:%ZZ@example.com",
        "sip:%4@example.com",
        "sip:%FF@example.com",
        "sip:a@example.com;x=%G1",
    ] {
        assert!(SipUri::parse(s).is_err(), "{s}");
    }
}

#[test]
fn unusual_user_and_password() {
    // RFC 4475 intmeth's Request-URI.
    let s = "sip:1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*:&it+has=1,weird!*pas$wo~d_too.(doesn't-it)@example.com";
    let u = ok(s);
    assert_eq!(
        u.user.as_deref(),
        Some("1_unusual.URI~(to-be!sure)&isn't+it$/crazy?,/;;*")
    );
    assert_eq!(
        u.password.as_deref(),
        Some("&it+has=1,weird!*pas$wo~d_too.(doesn't-it)")
    );
    assert_eq!(roundtrip(s), s);
    assert!(SipUri::parse("sip:@example.com").is_err());
    assert!(SipUri::parse("sip:a@b@example.com").is_err());
}

#[test]
fn hosts() {
    for (uri, host) in [
        ("sip:[2001:DB8::10]", "[2001:db8::10]"),
        ("sip:u@[::ffff:192.0.2.10]:19823", "[::ffff:192.0.2.10]"),
        ("sip:192.0.2.1", "192.0.2.1"),
        ("sip:a-b.example.com.", "a-b.example.com."),
    ] {
        assert_eq!(ok(uri).host, host, "{uri}");
    }
    // A port follows the brackets, never inside them.
    for (uri, port) in [
        ("sip:[2001:db8::10]:5070", Some(5070)),
        ("sip:[2001:db8::10:5070]", None),
    ] {
        assert_eq!(ok(uri).port, port, "{uri}");
    }
    for s in [
        "sip:2001:db8::10",
        "sip:[2001:db8:::192.0.2.1]",
        "sip:[fe80::1%25eth0]",
        "sip:[::1",
        "sip:[::1]x",
        "sip:256.1.1.1",
        "sip:010.1.1.1",
        "sip:1.2.3",
        "sip:-a.com",
        "sip:a-.com",
        "sip:a..com",
        "sip:a_b.com",
        "sip:host.123",
        "sip:",
        "sip:u@",
    ] {
        assert!(SipUri::parse(s).is_err(), "{s}");
    }
}

#[test]
fn ports() {
    assert_eq!(ok("sip:x.com:65535").port, Some(65535));
    for s in [
        "sip:x.com:0",
        "sip:x.com:65536",
        "sip:x.com:",
        "sip:x.com:5o60",
        "sip:x.com:000001",
    ] {
        assert_eq!(SipUri::parse(s), Err(UriError::Port), "{s}");
    }
}

#[test]
fn params_and_headers() {
    let u = ok("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31");
    assert_eq!(u.user.as_deref(), Some("caller"));
    assert_eq!(u.params[0], ("%6c%72".to_string(), None));
    roundtrip("sip:cal%6Cer@host5.example.net;%6C%72;n%61me=v%61lue%25%34%31");
    let u = ok("sip:user@example.com?Route=%3Csip:sip.example.com%3E");
    assert_eq!(
        u.headers.as_deref(),
        Some("Route=%3Csip:sip.example.com%3E")
    );
    roundtrip("sip:user@example.com?Route=%3Csip:sip.example.com%3E&x=");
    for s in [
        "sip:x.com;;lr",
        "sip:x.com;lr;",
        "sip:x.com;a=",
        "sip:x.com;lr;LR",
        "sip:x.com;transport=udp;transport=tcp",
        "sip:x.com?",
        "sip:x.com?a",
        "sip:x.com?=b",
        "sip:x.com;a=<b>",
    ] {
        assert!(SipUri::parse(s).is_err(), "{s}");
    }
}

#[test]
fn name_addr_forms() {
    let n = NameAddr::parse("\"Bell, Alexander\" <sip:a.g.bell@example.com>;tag=433423").unwrap();
    assert_eq!(n.display.as_deref(), Some("Bell, Alexander"));
    assert_eq!(n.tag(), Some("433423"));
    assert_eq!(
        n.to_string(),
        "\"Bell, Alexander\" <sip:a.g.bell@example.com>;tag=433423"
    );
    // RFC 4475 lwsdisp: token display name directly before '<'.
    let n = NameAddr::parse("caller<sip:caller@example.com>;tag=323").unwrap();
    assert_eq!(n.display.as_deref(), Some("caller"));
    assert_eq!(n.to_string(), "\"caller\" <sip:caller@example.com>;tag=323");
    let n = NameAddr::parse("A.  Bell <sip:a@example.com>").unwrap();
    assert_eq!(n.display.as_deref(), Some("A. Bell"));
    // addr-spec: parameters after the URI are header parameters.
    let n = NameAddr::parse("sip:+19725552222@gw1.example.net;unknownparam").unwrap();
    assert!(n.uri.params.is_empty());
    assert_eq!(n.param("unknownparam"), Some(None));
    assert_eq!(
        n.to_string(),
        "<sip:+19725552222@gw1.example.net>;unknownparam"
    );
    let n = NameAddr::parse("<sip:+19725552222@gw1.example.net;unknownparam>").unwrap();
    assert_eq!(n.uri.param("unknownparam"), Some(None));
    assert!(n.params.is_empty());
    let n =
        NameAddr::parse(" \"J Rosenberg \\\\\\\"\" <sip:j@example.com> ; tag = 98asjd8 ").unwrap();
    assert_eq!(n.display.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(n.tag(), Some("98asjd8"));
    let again = NameAddr::parse(&n.to_string()).unwrap();
    assert_eq!(again, n);
    let n = NameAddr::parse("\"\" <sip:x.com>").unwrap();
    assert_eq!(n.display, None);
    let n = NameAddr::parse("<sip:x.com>;q=0.7;expires=3600;p=\"a;b\"").unwrap();
    assert_eq!(n.param("p"), Some(Some("\"a;b\"")));
    assert_eq!(NameAddr::parse(&n.to_string()).unwrap(), n);
}

#[test]
fn name_addr_refusals() {
    for s in [
        "< sip:t.watson@example.org >",                         // badaspec
        "Watson, Thomas <sip:t@example.org>",                   // baddn
        "\"Mr. J. User <sip:j.user@example.com>",               // quotbal
        "sip:user@example.com?Route=%3Csip:sip.example.com%3E", // regbadct
        "<sip:x.com>;;;;",
        "<sip:x.com>;tag",
        "<sip:x.com>;tag=\"q\"",
        "<sip:x.com>;tag=a;tag=b",
        "<sip:x.com>;expires=99999999999",
        "<sip:x.com>;q=1.5",
        "<sip:x.com>;q=0.1234",
        "<sip:x.com> junk",
        "<sip:x.com",
        "<tel:+123>",
        "<http://www.example.com>;tag=1",
        "isbn:2983792873",
        "\"a\u{0}\" <sip:x.com>",
        "",
    ] {
        assert!(NameAddr::parse(s).is_err(), "{s:?}");
    }
    assert!(NameAddr::parse_bracketed("sip:x.com;lr").is_err());
    assert!(NameAddr::parse_bracketed("<sip:x.com;lr>").is_ok());
}

#[test]
fn contact_star() {
    assert_eq!(ContactValue::parse(" * "), Ok(ContactValue::Star));
    assert!(matches!(
        ContactValue::parse("<sip:a@b.com>"),
        Ok(ContactValue::Addr(_))
    ));
    assert!(ContactValue::parse("**").is_err());
}

#[test]
fn list_splitting() {
    assert_eq!(
        split_list("\"a, b\" <sip:x.com;p=1>, <sip:y.com> ").unwrap(),
        vec!["\"a, b\" <sip:x.com;p=1>", "<sip:y.com>"]
    );
    assert_eq!(
        split_list("<sip:a,b@x.com>").unwrap(),
        vec!["<sip:a,b@x.com>"]
    );
    assert_eq!(split_list("\"q\\\",\" <sip:x.com>").unwrap().len(), 1);
    for s in [
        "a,,b",
        "a,",
        ",a",
        "\"open",
        "<sip:x.com",
        "<<sip:x.com>>",
        "",
    ] {
        assert!(split_list(s).is_err(), "{s}");
    }
}

#[test]
fn qvalues_and_delta_seconds() {
    for q in ["0", "1", "0.5", "0.333", "1.000", "1."] {
        assert!(is_qvalue(q), "{q}");
    }
    for q in ["2", "1.5", "0.1234", "", ".5", "01"] {
        assert!(!is_qvalue(q), "{q}");
    }
    for (s, want) in [
        ("4294967295", Some(u32::MAX)),
        ("4294967296", None),
        ("-1", None),
    ] {
        assert_eq!(parse_delta_seconds(s), want, "{s}");
    }
}
