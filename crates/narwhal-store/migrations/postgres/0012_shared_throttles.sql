-- Shared send throttles: several nodes sending through one provider account draw from
-- one token bucket and one rolling 24-hour count, kept here (SQLite is single-node and
-- keeps its bucket in memory; the tables exist there too, unused, so both schemas match).
CREATE TABLE mail_throttles (
    account TEXT PRIMARY KEY,
    -- Tokens in units of 1/period_ms of a message (refill: `limit` units per ms).
    units BIGINT NOT NULL,
    period_ms BIGINT NOT NULL,
    refilled_at BIGINT NOT NULL
);

-- Sends per account per minute, for the rolling 24-hour quota. A minute's sends are
-- forgotten once the end of the minute is 24 hours old (conservative, like the
-- in-process throttle).
CREATE TABLE mail_throttle_minutes (
    account TEXT NOT NULL,
    minute BIGINT NOT NULL,
    sends BIGINT NOT NULL,
    PRIMARY KEY (account, minute)
);

-- Takes up to p_want tokens for p_account, under the account row's lock: one round trip
-- per slice whatever the number of nodes. Each statement in this (volatile) function
-- sees what other nodes committed before the lock was granted, so the 24-hour count
-- is exact. Returns the tokens granted and, when fewer than asked, the earliest time
-- (ms) one more could be.
CREATE FUNCTION narwhal_take_send_tokens(
    p_account TEXT, p_now BIGINT, p_limit BIGINT, p_period BIGINT, p_burst BIGINT,
    p_daily BIGINT, p_want BIGINT
) RETURNS TABLE (granted BIGINT, retry_at BIGINT) LANGUAGE plpgsql AS $$
DECLARE
    t mail_throttles%ROWTYPE;
    cap BIGINT := p_burst * p_period;
    u BIGINT;
    day_used BIGINT := 0;
    n BIGINT;
    next_at BIGINT := p_now;
BEGIN
    SELECT * INTO t FROM mail_throttles WHERE account = p_account FOR UPDATE;
    IF NOT FOUND THEN
        INSERT INTO mail_throttles (account, units, period_ms, refilled_at)
        VALUES (p_account, cap, p_period, p_now) ON CONFLICT (account) DO NOTHING;
        SELECT * INTO t FROM mail_throttles WHERE account = p_account FOR UPDATE;
    END IF;
    u := t.units;
    IF t.period_ms <> p_period THEN
        u := u * p_period / t.period_ms;
    END IF;
    IF p_now > t.refilled_at THEN
        u := u + (p_now - t.refilled_at) * p_limit;
    END IF;
    u := LEAST(u, cap);
    n := LEAST(p_want, u / p_period);
    IF p_daily IS NOT NULL THEN
        DELETE FROM mail_throttle_minutes
        WHERE account = p_account AND (minute + 1) * 60000 + 86400000 <= p_now;
        SELECT COALESCE(SUM(sends), 0) INTO day_used FROM mail_throttle_minutes WHERE account = p_account;
        n := GREATEST(LEAST(n, p_daily - day_used), 0);
    END IF;
    u := u - n * p_period;
    UPDATE mail_throttles SET units = u, period_ms = p_period, refilled_at = GREATEST(p_now, t.refilled_at)
    WHERE account = p_account;
    IF n > 0 THEN
        INSERT INTO mail_throttle_minutes (account, minute, sends) VALUES (p_account, p_now / 60000, n)
        ON CONFLICT (account, minute) DO UPDATE SET sends = mail_throttle_minutes.sends + excluded.sends;
    END IF;
    IF n < p_want THEN
        IF p_daily IS NOT NULL AND day_used + n >= p_daily THEN
            SELECT COALESCE(MIN((minute + 1) * 60000 + 86400000), p_now + 60000) INTO next_at
            FROM mail_throttle_minutes WHERE account = p_account;
        ELSIF u < p_period THEN
            next_at := p_now + (p_period - u + p_limit - 1) / p_limit;
        END IF;
    END IF;
    RETURN QUERY SELECT n, next_at;
END
$$;
