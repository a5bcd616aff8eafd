-- Seed of the benchmark database, run by bench/run.py after `manage.py migrate`.
-- Set-based SQL: a million customers take seconds, not the hours an ORM loop would.
--
-- Placeholders (filled by run.py): {customers} customers B0000001..; {history} the first
-- {history} of them get purchase history; {integration} the id of the integration the
-- history is recorded under.
--
-- Customer i is a member unless i is a multiple of 5 (80 % members). Members among the
-- first {history} customers have 1–5 purchases over the last 720 days, each with its earn
-- entry and lot (expiring after 24 months, like the program rules below), a balance equal
-- to the sum of their entries and the tier their qualifying spend gives: exactly what
-- `manage.py ledger_check` expects. Other members have an empty account (balance 0).

INSERT INTO rewards_programrules
    (id, points_per_unit, minimum_spend, expiry_months, signup_bonus, birthday_bonus,
     referral_bonus_referrer, referral_bonus_referee, updated_at)
VALUES (1, 1.00, 0.00, 24, 0, 50, 0, 0, now());

-- The tiers of tests/factories.py standard_tiers(), with translated names.
INSERT INTO rewards_tier (code, name, name_translations, min_qualifying_spend, multiplier) VALUES
    ('bronze', 'Bronze', '{"da": "Bronze", "sv": "Brons"}', 0, 1.00),
    ('silver', 'Silver', '{"da": "Sølv", "sv": "Silver"}', 2000, 1.25),
    ('gold', 'Gold', '{"da": "Guld", "sv": "Guld"}', 5000, 2.00);

INSERT INTO rewards_categorymultiplier (category, multiplier, is_active) VALUES
    ('coffee-beans', 2.00, true),
    ('equipment', 0.50, true),
    ('tea', 1.50, false);

INSERT INTO accounts_customer
    (external_ref, email, first_name, last_name, birthday, language, time_zone,
     marketing_consent, marketing_consent_changed_at, enrolled_at, referral_code,
     created_at, referred_by_id, user_id)
SELECT 'B' || lpad(i::text, 7, '0'),
       'b' || i || '@bench.invalid',
       'Bench',
       'Customer ' || i,
       DATE '1950-01-01' + (i * 13) % 20000,
       (ARRAY['en', 'da', 'sv', 'ru', 'th'])[1 + (i / 5) % 5],
       'Europe/Copenhagen',
       i % 3 = 0,
       NULL,
       CASE WHEN i % 5 <> 0 THEN now() - make_interval(days => 730 + (i * 7) % 1000) END,
       -- 'BN' + digits cannot collide with the application's 8-letter codes.
       'BN' || i,
       now() - make_interval(days => 1800 + (i * 7) % 1000),
       NULL,
       NULL
FROM generate_series(1, {customers}) AS i;

INSERT INTO rewards_pointsaccount (customer_id, balance, tier_id, tier_changed_at, created_at, updated_at)
SELECT c.id, 0, (SELECT id FROM rewards_tier WHERE code = 'bronze'), c.enrolled_at, c.enrolled_at, c.enrolled_at
FROM accounts_customer c
WHERE c.enrolled_at IS NOT NULL;

-- Purchase history of the members among the first {history} customers.
INSERT INTO rewards_purchase
    (integration_id, external_id, customer_id, amount, currency, occurred_at, refunded_amount,
     points_earned, points_clawed_back, was_member, request_hash, balance_after, explanation, created_at)
SELECT {integration},
       'seed-' || h.customer_id || '-' || h.k,
       h.customer_id,
       h.amount,
       'DKK',
       h.occurred_at,
       0,
       floor(h.amount)::int,
       0,
       true,
       '',
       NULL,
       jsonb_build_array(
           jsonb_build_object('code', 'base', 'amount', h.amount::text, 'rate', '1', 'points', h.amount::text),
           jsonb_build_object('code', 'total', 'points', floor(h.amount)::int)
       ),
       h.occurred_at
FROM (
    SELECT c.id AS customer_id,
           k,
           (50 + ((c.id * 7919 + k * 104729) % 150000) / 100.0)::numeric(12, 2) AS amount,
           now() - make_interval(days => ((c.id * 31 + k * 97) % 720)::int, hours => ((c.id + k) % 12)::int) AS occurred_at
    FROM accounts_customer c
    CROSS JOIN LATERAL generate_series(1, 1 + c.id % 5) AS k
    WHERE c.enrolled_at IS NOT NULL
      AND c.external_ref <= 'B' || lpad({history}::text, 7, '0')
) h
ORDER BY h.occurred_at, h.customer_id, h.k;

-- One earn entry per purchase, with the running balance; ids follow the same order as the
-- window, so each account's newest entry carries its balance.
INSERT INTO rewards_ledgerentry
    (kind, points, balance_after, created_at, idempotency_key, explanation, reason,
     account_id, purchase_id, event_id, reverses_id, staff_user_id, lot_id, redemption_id, refund_id)
SELECT 'earn',
       p.points_earned,
       sum(p.points_earned) OVER (PARTITION BY p.customer_id ORDER BY p.occurred_at, p.id),
       p.occurred_at,
       'purchase:' || p.id || ':earn',
       p.explanation,
       '',
       p.customer_id,
       p.id,
       NULL, NULL, NULL, NULL, NULL, NULL
FROM rewards_purchase p
WHERE p.integration_id = {integration}
ORDER BY p.occurred_at, p.id;

UPDATE rewards_purchase p
SET balance_after = e.balance_after
FROM rewards_ledgerentry e
WHERE e.purchase_id = p.id AND p.integration_id = {integration};

-- A lot per credit, valid through the same day 24 months later (rules.expiry_date).
INSERT INTO rewards_pointslot (points, remaining, earned_at, expires_at, account_id, entry_id)
SELECT e.points,
       e.points,
       e.created_at,
       (date_trunc('day', e.created_at AT TIME ZONE 'Europe/Copenhagen') + interval '24 months 1 day')
           AT TIME ZONE 'Europe/Copenhagen',
       e.account_id,
       e.id
FROM rewards_ledgerentry e
WHERE e.kind = 'earn';

UPDATE rewards_pointsaccount a
SET balance = s.total, updated_at = now()
FROM (SELECT account_id, sum(points) AS total FROM rewards_ledgerentry GROUP BY account_id) s
WHERE a.customer_id = s.account_id;

-- The tier each member's qualifying spend (365 days) gives, as the nightly job would set it.
UPDATE rewards_pointsaccount a
SET tier_id = t.id, tier_changed_at = now()
FROM (
    SELECT customer_id, sum(amount - refunded_amount) AS spend
    FROM rewards_purchase
    WHERE occurred_at > now() - interval '365 days'
    GROUP BY customer_id
) s
CROSS JOIN LATERAL (
    SELECT id FROM rewards_tier WHERE min_qualifying_spend <= s.spend
    ORDER BY min_qualifying_spend DESC LIMIT 1
) t
WHERE a.customer_id = s.customer_id AND a.tier_id IS DISTINCT FROM t.id;
