#!/usr/bin/env python3
"""Takes donations through Narwhal's Stripe-compatible API with Stripe's official,
unmodified Python library.

Usage: check_narwhal.py BASE_URL NARWHAL_TOKEN [--mode full|charge] [--run ID]

Narwhal needs the donor's legal fields, which travel as PaymentIntent metadata
(first_name, last_name, email, address1, city, state, zip, employer, occupation and the
attestations own_funds, citizen_or_resident, not_contractor).

--mode full (the default) checks, with the library's own objects and exceptions:
1. create, then confirm, with idempotency keys: the intent succeeds;
2. the same create replayed with its key returns the same intent;
3. the same key with other parameters raises IdempotencyError;
4. retrieve shows it succeeded, with latest_charge and the caller's metadata;
5. a partial refund, then the rest; one more cent raises InvalidRequestError;
6. create-and-confirm with a declining card raises CardError (402, card_declined,
   a decline code), and replaying that key raises the same CardError;
7. a wrong key raises AuthenticationError.
Prints one line per check and `N passed, N failed`; exits 1 on any failure.

--mode charge creates and confirms one 42.00 gift in a single call and prints the
intent as JSON on the last line (for the failover test).
"""

import argparse
import json
import sys
import uuid

import stripe

DONOR = {
    "first_name": "Grace",
    "last_name": "Hopper",
    "email": "grace@example.org",
    "address1": "1 Navy Way",
    "city": "Arlington",
    "state": "VA",
    "zip": "22202",
    "employer": "US Navy",
    "occupation": "Rear Admiral",
    "own_funds": "true",
    "citizen_or_resident": "true",
    "not_contractor": "true",
}

outcomes = []


def check(name, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next check runs
        outcomes.append(False)
        print(f"FAIL {name}: {type(e).__name__}: {e}")
    else:
        outcomes.append(True)
        print(f"ok   {name}")


def expect(exc_type, fn):
    try:
        fn()
    except exc_type as e:
        return e
    raise AssertionError(f"expected {exc_type.__name__}")


def full(pm, declined_pm, run):
    gift = {}

    def create(**extra):
        meta = dict(DONOR, refcode="py-" + run, campaign="stripe-python")
        return stripe.PaymentIntent.create(
            amount=5500,
            currency="usd",
            payment_method=pm,
            payment_method_types=["card"],
            metadata=meta,
            receipt_email=DONOR["email"],
            idempotency_key="create-" + run,
            **extra,
        )

    def create_then_confirm():
        pi = create()
        assert pi.object == "payment_intent", pi.object
        assert pi.status == "requires_confirmation", pi.status
        done = stripe.PaymentIntent.confirm(pi.id, idempotency_key="confirm-" + run)
        assert done.id == pi.id
        assert done.status == "succeeded", (done.status, done.last_payment_error)
        assert done.amount_received == 5500, done.amount_received
        gift["pi"] = pi.id

    def replay():
        again = create()
        assert again.id == gift["pi"], (again.id, gift["pi"])
        assert again.status == "requires_confirmation", again.status

    def other_params():
        expect(
            stripe.IdempotencyError,
            lambda: stripe.PaymentIntent.create(
                amount=9900, currency="usd", payment_method=pm, idempotency_key="create-" + run
            ),
        )

    def retrieve():
        got = stripe.PaymentIntent.retrieve(gift["pi"])
        assert got.status == "succeeded", got.status
        assert got.latest_charge, "no latest_charge"
        assert got.metadata["campaign"] == "stripe-python", got.metadata
        assert got.metadata["narwhal_donation"].startswith("don_"), got.metadata

    def refunds():
        r1 = stripe.Refund.create(payment_intent=gift["pi"], amount=2000, idempotency_key="r1-" + run)
        assert (r1.object, r1.amount, r1.status) == ("refund", 2000, "succeeded"), r1
        r2 = stripe.Refund.create(payment_intent=gift["pi"], idempotency_key="r2-" + run)
        assert r2.amount == 3500, r2.amount
        expect(
            stripe.InvalidRequestError,
            lambda: stripe.Refund.create(payment_intent=gift["pi"], amount=1, idempotency_key="r3-" + run),
        )

    def decline():
        def go():
            stripe.PaymentIntent.create(
                amount=2500,
                currency="usd",
                payment_method=declined_pm,
                confirm=True,
                metadata=DONOR,
                idempotency_key="decline-" + run,
            )

        first = expect(stripe.CardError, go)
        assert first.http_status == 402, first.http_status
        assert first.code == "card_declined", first.code
        assert first.error.decline_code, "no decline_code"
        again = expect(stripe.CardError, go)
        assert again.error.payment_intent["id"] == first.error.payment_intent["id"]
        assert again.headers.get("idempotent-replayed") == "true", dict(again.headers)

    def wrong_key():
        expect(
            stripe.AuthenticationError,
            lambda: stripe.PaymentIntent.retrieve(gift["pi"], api_key="nwl_not_a_real_key"),
        )

    check("create then confirm with idempotency keys", create_then_confirm)
    if "pi" in gift:
        check("the same key replays the same intent", replay)
        check("the same key with other parameters is an IdempotencyError", other_params)
        check("retrieve shows it succeeded", retrieve)
        check("partial and full refunds; over-refund refused", refunds)
        check("a wrong key is an AuthenticationError", wrong_key)
    check("a decline raises CardError, and its replay the same", decline)
    passed = sum(outcomes)
    print(f"{passed} passed, {len(outcomes) - passed} failed")
    return 0 if passed == len(outcomes) == 7 else 1


def charge(pm, run):
    pi = stripe.PaymentIntent.create(
        amount=4200,
        currency="usd",
        payment_method=pm,
        confirm=True,
        metadata=DONOR,
        idempotency_key="charge-" + run,
    )
    print(json.dumps({"id": pi.id, "status": pi.status, "amount_received": pi.amount_received,
                      "next_action": pi.next_action}))
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("token")
    ap.add_argument("--mode", choices=["full", "charge"], default="full")
    ap.add_argument("--pm", default="pm_card_visa")
    ap.add_argument("--declined-pm", default="pm_card_chargeDeclined")
    ap.add_argument("--run", default=uuid.uuid4().hex[:12])
    args = ap.parse_args()
    stripe.api_base = args.base_url.rstrip("/")
    stripe.api_key = args.token
    stripe.max_network_retries = 0
    print(f"stripe-python {stripe.VERSION} against {stripe.api_base}")
    if args.mode == "charge":
        return charge(args.pm, args.run)
    return full(args.pm, args.declined_pm, args.run)


if __name__ == "__main__":
    sys.exit(main())
