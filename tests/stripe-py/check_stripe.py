#!/usr/bin/env python3
"""Drives a Stripe-compatible API with Stripe's official, unmodified Python library.

Usage: check_stripe.py BASE_URL SECRET_KEY [--declined-pm TOKEN] [--pm TOKEN]

Points `stripe.api_base` at BASE_URL (the fake Stripe, or Narwhal's own compatible
API) and checks, with the library's own objects and exceptions:

1. a PaymentIntent created without confirming, then confirmed, with an idempotency key;
2. the same create replayed with the same key returns the same intent;
3. the same key with other parameters raises IdempotencyError;
4. retrieve shows it succeeded, with metadata intact;
5. a partial refund, then the rest; refunding more raises InvalidRequestError;
6. create-and-confirm in one call with a declining card raises CardError (402) with a
   decline code;
7. a wrong key raises AuthenticationError.

Prints one line per check and `N passed, N failed` at the end; exits 1 on any failure.
Needs only the `stripe` package (see scripts/install-deps for the pinned version).
"""

import argparse
import sys
import uuid

import stripe

results = []


def check(name, fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        results.append((name, False))
        print(f"FAIL {name}: {type(e).__name__}: {e}")
    else:
        results.append((name, True))
        print(f"ok   {name}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("base_url")
    ap.add_argument("secret_key")
    ap.add_argument("--pm", default="pm_card_visa")
    ap.add_argument("--declined-pm", default="pm_card_chargeDeclined")
    args = ap.parse_args()

    stripe.api_base = args.base_url.rstrip("/")
    stripe.api_key = args.secret_key
    stripe.max_network_retries = 0
    print(f"stripe-python {stripe.VERSION} against {stripe.api_base}")

    run = uuid.uuid4().hex[:12]
    state = {}

    def create_and_confirm():
        key = f"py-create-{run}"
        pi = stripe.PaymentIntent.create(
            amount=5500,
            currency="usd",
            payment_method=args.pm,
            payment_method_types=["card"],
            metadata={"narwhal_attempt": key, "source": "stripe-python"},
            idempotency_key=key,
        )
        assert pi.object == "payment_intent", pi.object
        assert pi.status == "requires_confirmation", pi.status
        assert pi.amount == 5500 and pi.currency == "usd"
        confirmed = stripe.PaymentIntent.confirm(pi.id, idempotency_key=f"py-confirm-{run}")
        assert confirmed.id == pi.id
        assert confirmed.status == "succeeded", confirmed.status
        assert confirmed.amount_received == 5500, confirmed.amount_received
        state["pi"] = pi
        state["key"] = key

    def replay_same_key():
        again = stripe.PaymentIntent.create(
            amount=5500,
            currency="usd",
            payment_method=args.pm,
            payment_method_types=["card"],
            metadata={"narwhal_attempt": state["key"], "source": "stripe-python"},
            idempotency_key=state["key"],
        )
        assert again.id == state["pi"].id, (again.id, state["pi"].id)

    def same_key_other_params():
        try:
            stripe.PaymentIntent.create(
                amount=9900,
                currency="usd",
                payment_method=args.pm,
                idempotency_key=state["key"],
            )
        except stripe.IdempotencyError:
            return
        raise AssertionError("expected IdempotencyError")

    def retrieve():
        got = stripe.PaymentIntent.retrieve(state["pi"].id)
        assert got.status == "succeeded", got.status
        assert got.metadata["source"] == "stripe-python"
        assert got.latest_charge, "no latest_charge"

    def refund():
        pi = state["pi"].id
        r1 = stripe.Refund.create(payment_intent=pi, amount=2000, idempotency_key=f"py-r1-{run}")
        assert r1.object == "refund" and r1.amount == 2000 and r1.status == "succeeded", r1
        r2 = stripe.Refund.create(payment_intent=pi, idempotency_key=f"py-r2-{run}")
        assert r2.amount == 3500, r2.amount
        try:
            stripe.Refund.create(payment_intent=pi, amount=1, idempotency_key=f"py-r3-{run}")
        except stripe.InvalidRequestError:
            return
        raise AssertionError("expected InvalidRequestError for an over-refund")

    def decline():
        try:
            stripe.PaymentIntent.create(
                amount=2500,
                currency="usd",
                payment_method=args.declined_pm,
                payment_method_types=["card"],
                confirm=True,
                idempotency_key=f"py-decline-{run}",
            )
        except stripe.CardError as e:
            assert e.http_status == 402, e.http_status
            assert e.code == "card_declined", e.code
            assert e.error.decline_code, "no decline_code"
            return
        raise AssertionError("expected CardError")

    def wrong_key():
        try:
            stripe.PaymentIntent.retrieve(state["pi"].id, api_key="sk_test_not_a_real_key")
        except stripe.AuthenticationError:
            return
        raise AssertionError("expected AuthenticationError")

    check("create then confirm with an idempotency key", create_and_confirm)
    if "pi" in state:
        check("the same key replays the same intent", replay_same_key)
        check("the same key with other parameters is an IdempotencyError", same_key_other_params)
        check("retrieve shows it succeeded", retrieve)
        check("partial and full refunds; over-refund refused", refund)
        check("a wrong key is an AuthenticationError", wrong_key)
    check("a decline raises CardError with a decline code", decline)

    passed = sum(1 for _, ok in results if ok)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and passed == 7 else 1


if __name__ == "__main__":
    sys.exit(main())
