"""The ledger's invariants, checked set-based in the database.

For every points account:
1. balance = the sum of its entries;
2. the newest entry's balance_after = balance;
3. what is left of its lots = the balance where the balance is positive, else 0.
"""

from django.db import connection

CHECK_SQL = """
SELECT a.customer_id, a.balance, COALESCE(e.total, 0), COALESCE(l.remaining, 0), last.balance_after
FROM rewards_pointsaccount a
LEFT JOIN (SELECT account_id, SUM(points) AS total FROM rewards_ledgerentry GROUP BY account_id) e
       ON e.account_id = a.customer_id
LEFT JOIN (SELECT account_id, SUM(remaining) AS remaining FROM rewards_pointslot GROUP BY account_id) l
       ON l.account_id = a.customer_id
LEFT JOIN (
    SELECT le.account_id, le.balance_after FROM rewards_ledgerentry le
    JOIN (SELECT account_id, MAX(id) AS id FROM rewards_ledgerentry GROUP BY account_id) m ON m.id = le.id
) last ON last.account_id = a.customer_id
WHERE a.balance <> COALESCE(e.total, 0)
   OR (CASE WHEN a.balance > 0 THEN a.balance ELSE 0 END) <> COALESCE(l.remaining, 0)
   OR (last.balance_after IS NOT NULL AND last.balance_after <> a.balance)
ORDER BY a.customer_id
LIMIT %s
"""


def ledger_violations(*, limit: int = 1000) -> list[dict]:
    """Accounts that break an invariant (at most `limit`), with what was found."""
    with connection.cursor() as cursor:
        cursor.execute(CHECK_SQL, [limit])
        rows = cursor.fetchall()
    violations = []
    for customer_id, balance, entries_total, lots_remaining, last_balance_after in rows:
        problems = []
        if balance != entries_total:
            problems.append(f"balance {balance} != sum of entries {entries_total}")
        if max(balance, 0) != lots_remaining:
            problems.append(f"lots hold {lots_remaining}, expected {max(balance, 0)}")
        if last_balance_after is not None and last_balance_after != balance:
            problems.append(f"newest entry says balance {last_balance_after}, account says {balance}")
        violations.append({"customer_id": customer_id, "problems": problems})
    return violations


def ledger_check_record(*, violations: list[dict], keep: int = 20):
    """Keep what one check found (the count and the first `keep` accounts), clean or not:
    the staff dashboard alerts while the newest check found violations."""
    from .models import LedgerCheck

    return LedgerCheck.objects.create(violations=len(violations), details=violations[:keep])
