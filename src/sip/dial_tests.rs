use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::*;
use crate::dialing::limits::Limiter;
use crate::dialing::Rule;
use crate::sip::flow::{Flows, Kind};
use crate::sip::ticket::Binding;

/// The shared limiter without the rest of the guard (store, mail): what the slots count in.
#[derive(Default)]
struct Fake(Limiter);

impl Counter for Fake {
    fn begin(&self, o: &Offender, id: &str, l: Limits, now: Instant) -> Result<(), Limited> {
        self.0.begin(&o.key(), id, l, now)
    }

    fn end(&self, o: &Offender, id: &str) {
        self.0.end(&o.key(), id)
    }
}

impl Fake {
    fn active(&self, ext: &str) -> usize {
        self.0.active(&ext_of(ext).key())
    }
}

fn ext_of(e: &str) -> Offender {
    Offender::Extension(e.to_string())
}

fn key(n: usize) -> CallKey {
    CallKey {
        call_id: format!("call-{n}"),
        tag: "phone-tag".into(),
    }
}

/// A call's first INVITE.
fn first() -> Attempt {
    Attempt {
        cseq: 1,
        branch: "z9hG4bK-1".into(),
    }
}

/// The same call's INVITE sent again with credentials.
fn again() -> Attempt {
    Attempt {
        cseq: 2,
        branch: "z9hG4bK-2".into(),
    }
}

const TWO: Limits = Limits {
    max_concurrent: 2,
    max_per_minute: 0,
};

const UNLIMITED: Limits = Limits {
    max_concurrent: 0,
    max_per_minute: 0,
};

#[test]
fn a_challenged_call_is_one_call_and_one_attempt_until_its_bye() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    let one_a_minute = Limits {
        max_concurrent: 1,
        max_per_minute: 1,
    };
    let me = ext_of("1001");
    s.start(&c, &me, key(1), first(), 7, one_a_minute, t)
        .unwrap();
    // A retransmission, then Asterisk's 401, then the INVITE again with credentials: with one
    // call and one attempt a minute allowed, it must still pass.
    s.start(&c, &me, key(1), first(), 7, one_a_minute, t)
        .unwrap();
    s.answered(&c, &key(1), 1, 401, Some("ast"), t);
    assert_eq!(c.active("1001"), 1, "the challenge keeps the slot");
    s.start(
        &c,
        &me,
        key(1),
        again(),
        7,
        one_a_minute,
        t + Duration::from_secs(1),
    )
    .unwrap();
    s.answered(&c, &key(1), 2, 200, Some("ast"), t + Duration::from_secs(2));
    // Up: a refused re-INVITE (hold with a bad offer) does not end the call, and the sweep
    // long after the challenge's grace leaves an answered call alone.
    s.answered(&c, &key(1), 3, 488, Some("ast"), t + Duration::from_secs(3));
    s.sweep(&c, t + CHALLENGE_GRACE * 10);
    assert_eq!(c.active("1001"), 1);
    // A second call is over both limits.
    let e = s
        .start(
            &c,
            &me,
            key(2),
            first(),
            7,
            one_a_minute,
            t + Duration::from_secs(4),
        )
        .unwrap_err();
    assert_eq!(
        e,
        NoSlot::Limited(Limited {
            rule: Rule::MaxConcurrentCalls,
            retry_after: Duration::from_secs(30)
        })
    );
    // The BYE ends it; a new call still waits for the minute to pass.
    s.bye_answered(&c, &key(1), Some("ast"), 200);
    assert_eq!(c.active("1001"), 0);
    let e = s
        .start(
            &c,
            &me,
            key(2),
            first(),
            7,
            one_a_minute,
            t + Duration::from_secs(10),
        )
        .unwrap_err();
    assert_eq!(
        e,
        NoSlot::Limited(Limited {
            rule: Rule::MaxCallAttemptsPerMinute,
            retry_after: Duration::from_secs(50)
        })
    );
    // Allowed again once the first attempt left the window.
    s.start(
        &c,
        &me,
        key(2),
        first(),
        7,
        one_a_minute,
        t + Duration::from_secs(60),
    )
    .unwrap();
    assert!(s.len() == 1 && c.active("1001") == 1);
}

#[test]
fn a_challenge_nobody_answers_gives_the_slot_back_after_its_grace() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    s.start(&c, &ext_of("1001"), key(1), first(), 1, TWO, t)
        .unwrap();
    s.answered(&c, &key(1), 1, 407, Some("ast"), t);
    // A copy of the challenge changes nothing.
    s.answered(&c, &key(1), 1, 407, Some("ast"), t + Duration::from_secs(5));
    s.sweep(&c, t + CHALLENGE_GRACE - Duration::from_millis(1));
    assert_eq!(c.active("1001"), 1);
    s.sweep(&c, t + CHALLENGE_GRACE);
    assert_eq!(c.active("1001"), 0);
    assert!(s.is_empty());
    // The edge answering the challenge itself (a browser) puts the call back in flight: the
    // sweep then leaves it alone.
    s.start(&c, &ext_of("2001"), key(2), first(), 2, TWO, t)
        .unwrap();
    s.answered(&c, &key(2), 1, 401, Some("ast"), t);
    s.resent(&key(2), 2, t);
    s.sweep(&c, t + CHALLENGE_GRACE * 2);
    assert_eq!(c.active("2001"), 1);
}

#[test]
fn a_hundred_refused_cancelled_and_failed_calls_leave_no_slot_behind() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    let me = ext_of("1001");
    for n in 0..100 {
        let k = key(n);
        s.start(&c, &me, k.clone(), first(), 3, TWO, t).unwrap();
        match n % 7 {
            // Busy, not found, cancelled (487), forbidden by the dialplan.
            0 => s.answered(&c, &k, 1, 486, Some("ast"), t),
            1 => s.answered(&c, &k, 1, 404, Some("ast"), t),
            2 => s.answered(&c, &k, 1, 487, Some("ast"), t),
            // The edge's own 408 for an INVITE Asterisk never answered.
            3 => s.answered(&c, &k, 1, 408, Some("ast"), t),
            // Challenged, then refused with credentials.
            4 => {
                s.answered(&c, &k, 1, 401, Some("ast"), t);
                s.start(&c, &me, k.clone(), again(), 3, TWO, t).unwrap();
                s.answered(&c, &k, 2, 403, Some("ast"), t);
            }
            // Challenged, then a CANCEL Asterisk did not know: no INVITE is left to answer.
            5 => {
                s.answered(&c, &k, 1, 407, None, t);
                s.unknown_to_asterisk(&c, &k);
            }
            // Answered, then a BYE.
            _ => {
                s.answered(&c, &k, 1, 200, Some("ast"), t);
                s.unknown_to_asterisk(&c, &k);
                assert_eq!(
                    c.active("1001"),
                    1,
                    "a late 481 must not end a call that is up"
                );
                s.end(&c, &k);
            }
        }
        assert_eq!(c.active("1001"), 0, "call {n}");
    }
    // Calls of a connection the edge closed, ringing and answered alike; another
    // connection's call stays.
    s.start(&c, &me, key(200), first(), 4, TWO, t).unwrap();
    s.start(&c, &me, key(201), first(), 4, TWO, t).unwrap();
    s.answered(&c, &key(201), 1, 200, Some("ast"), t);
    s.start(&c, &ext_of("1002"), key(202), first(), 5, TWO, t)
        .unwrap();
    s.flow_ended(&c, 4);
    assert_eq!((c.active("1001"), c.active("1002"), s.len()), (0, 1, 1));
    // Answers for calls nobody counts change nothing.
    s.answered(&c, &key(999), 1, 486, Some("ast"), t);
    s.end(&c, &key(999));
    assert_eq!(c.active("1002"), 1);
}

#[test]
fn a_call_id_reused_by_another_extension_is_a_merged_request_not_a_free_call() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    s.start(&c, &ext_of("1001"), key(1), first(), 1, TWO, t)
        .unwrap();
    assert_eq!(
        s.start(&c, &ext_of("1002"), key(1), first(), 2, TWO, t),
        Err(NoSlot::Merged)
    );
    // The same connection whose REGISTER was accepted meanwhile: still its one call.
    s.start(&c, &ext_of("1003"), key(1), first(), 1, TWO, t)
        .unwrap();
    assert_eq!((c.active("1001"), c.active("1003"), s.len()), (1, 0, 1));
    // Another tag is another dialog: another call.
    let other = CallKey {
        call_id: "call-1".into(),
        tag: "other".into(),
    };
    s.start(&c, &ext_of("1001"), other, first(), 1, TWO, t)
        .unwrap();
    assert_eq!(c.active("1001"), 2);
}

fn invite_again(n: u32) -> Attempt {
    Attempt {
        cseq: n,
        branch: format!("z9hG4bK-{n}"),
    }
}

#[test]
fn another_invite_of_a_counted_call_is_refused_and_frees_nothing() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    let me = ext_of("1001");
    s.start(&c, &me, key(1), first(), 1, UNLIMITED, t).unwrap();
    // While it rings: a new branch and CSeq with the same Call-ID and tag would be a second
    // dialog at pjsip, counted nowhere.
    assert_eq!(
        s.start(&c, &me, key(1), invite_again(2), 1, UNLIMITED, t),
        Err(NoSlot::Repeated)
    );
    // Its failure (to a number that does not exist) must not end the first call's slot.
    s.answered(&c, &key(1), 2, 404, None, t);
    assert_eq!((c.active("1001"), s.len()), (1, 1));
    // A retransmission of the counted INVITE is still the same call.
    s.start(&c, &me, key(1), first(), 1, UNLIMITED, t).unwrap();
    s.answered(&c, &key(1), 1, 200, Some("ast"), t);
    // Up: the same again.
    assert_eq!(
        s.start(&c, &me, key(1), invite_again(5), 1, UNLIMITED, t),
        Err(NoSlot::Repeated)
    );
    s.answered(&c, &key(1), 5, 486, None, t);
    assert_eq!(c.active("1001"), 1);
    // After a challenge only the re-send (a higher or equal CSeq) is the same call.
    s.start(&c, &me, key(2), invite_again(7), 1, UNLIMITED, t)
        .unwrap();
    s.answered(&c, &key(2), 7, 401, None, t);
    assert_eq!(
        s.start(&c, &me, key(2), invite_again(6), 1, UNLIMITED, t),
        Err(NoSlot::Repeated)
    );
    s.start(&c, &me, key(2), invite_again(8), 1, UNLIMITED, t)
        .unwrap();
    // Once it is placed again, a second re-send is another dialog.
    assert_eq!(
        s.start(&c, &me, key(2), invite_again(9), 1, UNLIMITED, t),
        Err(NoSlot::Repeated)
    );
    // A late answer to the challenged INVITE does not touch the re-sent one.
    s.answered(&c, &key(2), 7, 401, None, t);
    s.answered(&c, &key(2), 8, 486, None, t);
    assert_eq!((c.active("1001"), s.len()), (1, 1));
}

#[test]
fn a_cancel_asterisk_does_not_know_frees_only_a_challenged_call() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    s.start(&c, &ext_of("1001"), key(1), first(), 1, TWO, t)
        .unwrap();
    // Ringing: pjsip answers a CANCEL with a wrong branch 481 and the INVITE rings on.
    s.unknown_to_asterisk(&c, &key(1));
    assert_eq!(c.active("1001"), 1);
    // Challenged: no INVITE is left at Asterisk, the phone gave up.
    s.answered(&c, &key(1), 1, 407, None, t);
    s.unknown_to_asterisk(&c, &key(1));
    assert_eq!((c.active("1001"), s.len()), (0, 0));
}

#[test]
fn a_bye_frees_the_slot_when_it_ends_the_dialog_whatever_asterisk_answers() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    let me = ext_of("1001");
    for (n, status) in [(1, 200), (2, 481), (3, 408)] {
        s.start(&c, &me, key(n), first(), 1, UNLIMITED, t).unwrap();
        s.answered(&c, &key(n), 1, 200, Some("ast"), t);
        // Another dialog's BYE (a made-up To tag, or none): Asterisk's 481 ends nothing.
        s.bye_answered(&c, &key(n), Some("made-up"), status);
        s.bye_answered(&c, &key(n), None, status);
        // Refused within the dialog (a stale CSeq gets 500): the call is still up.
        s.bye_answered(&c, &key(n), Some("ast"), 500);
        assert_eq!(c.active("1001"), 1, "BYE answered {status}");
        // 2xx, 481 (after an Asterisk restart) and 408 (or no answer) end it (§15.1.1).
        s.bye_answered(&c, &key(n), Some("ast"), status);
        assert_eq!((c.active("1001"), s.len()), (0, 0), "BYE answered {status}");
    }
    // A BYE while it rings ends nothing here: the INVITE's 487 does.
    s.start(&c, &me, key(4), first(), 1, UNLIMITED, t).unwrap();
    s.bye_answered(&c, &key(4), Some("ast"), 481);
    assert_eq!(c.active("1001"), 1);
    s.answered(&c, &key(4), 1, 487, None, t);
    assert_eq!(c.active("1001"), 0);
}

#[test]
fn an_invite_never_answered_gives_its_slot_back_after_the_proceeding_limit() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    s.start(&c, &ext_of("1001"), key(1), first(), 1, TWO, t)
        .unwrap();
    // Challenged, then re-sent 10 s later: the limit runs from the re-send.
    s.answered(&c, &key(1), 1, 401, None, t);
    let resent = t + Duration::from_secs(10);
    s.start(&c, &ext_of("1001"), key(1), again(), 1, TWO, resent)
        .unwrap();
    s.sweep(&c, resent + PROCEEDING_LIMIT - Duration::from_millis(1));
    assert_eq!(c.active("1001"), 1);
    s.sweep(&c, resent + PROCEEDING_LIMIT);
    assert_eq!((c.active("1001"), s.len()), (0, 0));
}

#[test]
fn the_credentials_re_sent_after_a_challenge_name_the_extension_that_counts() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    let one = Limits {
        max_concurrent: 1,
        max_per_minute: 0,
    };
    // The first INVITE claims From 7777 (free text with identify_by=auth_username); the
    // re-send authenticates as 1001.
    s.start(&c, &ext_of("7777"), key(1), first(), 1, one, t)
        .unwrap();
    s.answered(&c, &key(1), 1, 401, None, t);
    s.start(&c, &ext_of("1001"), key(1), again(), 1, one, t)
        .unwrap();
    assert_eq!((c.active("7777"), c.active("1001")), (0, 1));
    // A second call from an invented From user is 1001's second call once it authenticates.
    s.start(&c, &ext_of("7778"), key(2), first(), 1, one, t)
        .unwrap();
    s.answered(&c, &key(2), 1, 401, None, t);
    assert_eq!(
        s.start(&c, &ext_of("1001"), key(2), again(), 1, one, t),
        Err(NoSlot::Limited(Limited {
            rule: Rule::MaxConcurrentCalls,
            retry_after: Duration::from_secs(30)
        }))
    );
    assert_eq!((c.active("7778"), c.active("1001"), s.len()), (0, 1, 1));
}

#[test]
fn old_calls_are_forgotten_with_the_limiter() {
    let (c, s, t) = (Fake::default(), Slots::default(), Instant::now());
    s.start(&c, &ext_of("1001"), key(1), first(), 1, UNLIMITED, t)
        .unwrap();
    s.answered(&c, &key(1), 1, 200, Some("ast"), t);
    s.sweep(&c, t + MAX_CALL_AGE);
    assert!(s.is_empty());
}

fn msg(raw: &str) -> Message {
    Message::parse(raw.replace('\n', "\r\n").as_bytes()).unwrap()
}

fn invite(uri: &str, from_user: &str) -> Message {
    msg(&format!(
        "INVITE {uri} SIP/2.0\nVia: SIP/2.0/TLS a.invalid;branch=z9hG4bK1\nMax-Forwards: 70\nFrom: <sip:{from_user}@pbx>;tag=ft\nTo: <{uri}>\nCall-ID: cid\nCSeq: 1 INVITE\nContent-Length: 0\n\n"
    ))
}

#[test]
fn the_dialled_user_is_read_as_asterisk_reads_it() {
    assert_eq!(
        dialled(&invite("sip:0088212345@pbx", "1001")),
        Some("0088212345")
    );
    // Escapes are decoded by the URI parser, as pjsip decodes them.
    assert_eq!(
        dialled(&invite("sip:1001%26PJSIP%2Ftrunk%2F900@pbx", "1001")),
        Some("1001&PJSIP/trunk/900")
    );
    assert_eq!(
        dialled(&invite("sip:1001&PJSIP/trunk/900@pbx", "1001")),
        Some("1001&PJSIP/trunk/900")
    );
    // No user part: pjsip's `s` extension.
    assert_eq!(dialled(&invite("sip:pbx.test", "1001")), None);
}

#[test]
fn calls_are_keyed_by_call_id_and_the_phones_tag_from_either_side() {
    let inv = invite("sip:600@pbx", "1001");
    let k = CallKey::of_caller(&inv).unwrap();
    assert_eq!((k.call_id.as_str(), k.tag.as_str()), ("cid", "ft"));
    // Asterisk's BYE in that call: the phone's tag is in To.
    let bye = msg("BYE sip:1001@a.invalid SIP/2.0\nVia: SIP/2.0/UDP 127.0.0.1;branch=z9hG4bK2\nMax-Forwards: 70\nFrom: <sip:600@pbx>;tag=ast\nTo: <sip:1001@pbx>;tag=ft\nCall-ID: cid\nCSeq: 9 BYE\nContent-Length: 0\n\n");
    assert_eq!(CallKey::of_callee(&bye), Some(k));
}

fn flow(binding: Option<Binding>) -> Arc<Flow> {
    let (f, _rx) = Flows::new().add(
        Kind::Tls,
        "192.0.2.1:1".parse().unwrap(),
        "192.0.2.2:5061".parse().unwrap(),
        binding,
        CancellationToken::new(),
    );
    f
}

#[test]
fn the_extension_is_the_tickets_then_a_registered_one_then_the_from_user() {
    let ws = flow(Some(Binding {
        user: "alice".into(),
        extension: "2001".into(),
        session: "s".into(),
    }));
    assert_eq!(
        offender(&ws, &invite("sip:600@pbx", "2001")),
        ext_of("2001")
    );
    let tls = flow(None);
    // Before any REGISTER: the From user, a claim; none at all is `anonymous`.
    assert_eq!(
        offender(&tls, &invite("sip:600@pbx", "1009")),
        ext_of("1009")
    );
    let anon = msg("INVITE sip:600@pbx SIP/2.0\nVia: SIP/2.0/TLS a.invalid;branch=z9hG4bK1\nMax-Forwards: 70\nFrom: <sip:pbx>;tag=x\nTo: <sip:600@pbx>\nCall-ID: c\nCSeq: 1 INVITE\nContent-Length: 0\n\n");
    assert_eq!(offender(&tls, &anon), ext_of("anonymous"));
    // Once Asterisk accepted REGISTERs of 1001 and 1002 here: a From naming one of them
    // is that line; any other From counts against the first.
    registered(&tls, "1001");
    registered(&tls, "1002");
    registered(&tls, "1001");
    assert_eq!(tls.registered(), vec!["1001", "1002"]);
    assert_eq!(
        offender(&tls, &invite("sip:600@pbx", "1002")),
        ext_of("1002")
    );
    assert_eq!(
        offender(&tls, &invite("sip:600@pbx", "1009")),
        ext_of("1001")
    );
    for n in 0..100 {
        registered(&tls, &format!("x{n}"));
    }
    // Unregistered: the username of the credentials, the account pjsip authenticates, before
    // the From user (free text with identify_by=auth_username).
    let fresh = flow(None);
    let authed = msg("INVITE sip:600@pbx SIP/2.0\nVia: SIP/2.0/TLS a.invalid;branch=z9hG4bK1\nMax-Forwards: 70\nFrom: <sip:7777@pbx>;tag=x\nTo: <sip:600@pbx>\nCall-ID: c\nCSeq: 2 INVITE\nProxy-Authorization: Digest username=\"1001\", realm=\"asterisk\", nonce=\"n\", uri=\"sip:600@pbx\", response=\"r\"\nContent-Length: 0\n\n");
    assert_eq!(offender(&fresh, &authed), ext_of("1001"));
    // Unreadable credentials: the From user again.
    let broken = msg("INVITE sip:600@pbx SIP/2.0\nVia: SIP/2.0/TLS a.invalid;branch=z9hG4bK1\nMax-Forwards: 70\nFrom: <sip:7777@pbx>;tag=x\nTo: <sip:600@pbx>\nCall-ID: c\nCSeq: 2 INVITE\nAuthorization: Basic eDp5\nContent-Length: 0\n\n");
    assert_eq!(offender(&fresh, &broken), ext_of("7777"));
    // A registered connection keeps its registered line.
    registered(&fresh, "1002");
    assert_eq!(offender(&fresh, &authed), ext_of("1002"));
    assert_eq!(tls.registered().len(), MAX_REGISTERED);
}

#[test]
fn retry_after_is_whole_seconds_rounded_up() {
    assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    assert_eq!(retry_after_secs(Duration::from_millis(49_001)), 50);
    assert_eq!(retry_after_secs(Duration::ZERO), 1);
}

fn refer(refer_to: &str) -> Message {
    msg(&format!(
        "REFER sip:600@pbx SIP/2.0\nVia: SIP/2.0/TLS a.invalid;branch=z9hG4bK3\nMax-Forwards: 70\nFrom: <sip:1001@pbx>;tag=ft\nTo: <sip:600@pbx>;tag=ast\nCall-ID: cid\nCSeq: 3 REFER\n{refer_to}Content-Length: 0\n\n"
    ))
}

#[test]
fn a_transfer_target_is_read_like_a_dialled_number() {
    assert_eq!(
        transfer_target(&refer("Refer-To: <sip:0088216123@pbx>\n")),
        Transfer::To("0088216123".into())
    );
    assert_eq!(
        transfer_target(&refer("Refer-To: <sip:1001%26PJSIP%2Ftrunk@pbx>\n")),
        Transfer::To("1001&PJSIP/trunk".into())
    );
    // An attended transfer names an extension and the call it replaces.
    assert_eq!(
        transfer_target(&refer(
            "Refer-To: <sip:1002@pbx?Replaces=abc%3Bto-tag%3Dx%3Bfrom-tag%3Dy>\n"
        )),
        Transfer::To("1002".into())
    );
    assert_eq!(
        transfer_target(&refer("Refer-To: <sip:pbx>\n")),
        Transfer::Nothing
    );
    assert_eq!(transfer_target(&refer("")), Transfer::Nothing);
    // What we cannot read, we cannot vouch for.
    assert_eq!(
        transfer_target(&refer("Refer-To: <tel:+8816123>\n")),
        Transfer::Unreadable
    );
}
