"""A labelled retrieval set for memory recall: specific facts, and questions about them.

Each fact is what an agent might store; each question asks for it in other words (a
paraphrase, a synonym, a different word order or inflection), as agents do. Near-miss
facts share a fact's subject but not its answer, so ranking, not only matching, decides.
``QUESTIONS`` maps a question to the keys of the facts that answer it (graded 2); the
near misses a question's subject also fits are graded 1 (``PARTIAL``).

Used by ``bench/retrieval_quality.py`` (figures) and ``tests/test_memory_relevance.py``
(the new ranking is not worse than the old one on it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Final

__all__ = ["FACTS", "NEAR_MISSES", "PARTIAL", "QUESTIONS", "ndcg_at", "recall_at"]

# key -> content
FACTS: Final[Mapping[str, str]] = {
    "pg-backup": "Production PostgreSQL backups run nightly at 02:00 UTC and are kept for 35 "
                 "days in the eu-west bucket.",
    "jwt-rotation": "The JWT signing keys are rotated on the first Monday of every month by the "
                    "platform team.",
    "oncall-handover": "On-call handover happens every Wednesday at 10:00 in the #ops-handover "
                       "channel.",
    "redis-maxmemory": "Redis maxmemory is set to 4 GB with the allkeys-lru eviction policy on "
                       "the cache cluster.",
    "deploy-freeze": "There is a deployment freeze from December 20 to January 3; only hotfixes "
                     "approved by the release manager ship.",
    "api-rate-limit": "The public API allows 600 requests per minute per token; bursts above "
                      "that get HTTP 429.",
    "ci-runner": "CI builds run on self-hosted runners with 8 vCPUs; the arm64 runner pool is "
                 "called graviton-large.",
    "customer-acme-sla": "Acme Corp's contract guarantees 99.95% monthly uptime and a four-hour "
                         "response for severity one incidents.",
    "logging-retention": "Application logs are retained for 14 days in Loki; audit logs are "
                         "archived for seven years.",
    "db-failover": "Database failover to the standby replica takes about 40 seconds and is "
                   "triggered by Patroni.",
    "vpn-provider": "Remote staff connect through WireGuard; the old OpenVPN gateway was "
                    "decommissioned in March.",
    "password-policy": "Employee passwords need at least 14 characters and are checked against "
                       "the breached-password list.",
    "queue-dead-letter": "Messages that fail five times move to the orders-dlq dead letter "
                         "queue for manual review.",
    "timezone-standup": "The daily standup is at 09:30 Berlin time, 15 minutes, cameras "
                        "optional.",
    "frontend-framework": "The customer dashboard is written in Svelte; the admin console still "
                          "uses Angular 14.",
    "s3-lifecycle": "Objects in the uploads bucket move to Glacier after 90 days and are "
                    "deleted after two years.",
    "k8s-version": "The production Kubernetes clusters run version 1.29; the upgrade to 1.30 is "
                   "planned for the second quarter.",
    "incident-postmortem": "Every severity one incident needs a written postmortem within five "
                           "business days.",
    "feature-flags": "Feature flags are managed in Unleash; stale flags older than 90 days are "
                     "removed during cleanup sprints.",
    "search-engine": "Product search uses OpenSearch with a dedicated three-node cluster "
                     "separate from logging.",
    "email-provider": "Transactional email is sent through Postmark; marketing newsletters go "
                      "through Mailchimp.",
    "cert-renewal": "TLS certificates are issued by Let's Encrypt and renewed automatically by "
                    "cert-manager 30 days before expiry.",
    "gpu-budget": "The machine learning team has a monthly GPU budget of 12,000 euros on the "
                  "cloud provider.",
    "python-version": "All backend services must move to Python 3.12 before the end of the "
                      "year.",
    "data-residency": "Customer data of European clients must stay in the Frankfurt region for "
                      "GDPR compliance.",
    "pager-tool": "Alerts page the on-call engineer through Opsgenie; low-priority alerts only "
                  "create a Jira ticket.",
    "code-review": "Pull requests need two approvals, one of them from a code owner, before "
                   "merging to main.",
    "cache-ttl": "Product catalogue responses are cached for 300 seconds at the CDN edge.",
    "load-test": "The last load test sustained 4,500 checkouts per minute before latency "
                 "exceeded the 800 ms objective.",
    "office-wifi": "The guest Wi-Fi password in the Lisbon office changes every Friday and is "
                   "posted at reception.",
}

# Same subjects, other answers: a ranking must put the fact above these.
NEAR_MISSES: Final[Mapping[str, str]] = {
    "staging-backup": "Staging database backups are taken weekly and kept for seven days only.",
    "api-keys-rotation": "Third-party API keys are rotated yearly when the vendor contract "
                         "renews.",
    "oncall-pay": "On-call engineers receive a weekly allowance; the handbook describes the "
                  "rates.",
    "redis-sessions": "Session data lives in a separate Redis instance without eviction.",
    "deploy-window": "Regular deployments happen Tuesday to Thursday between 10:00 and 16:00.",
    "internal-rate-limit": "Internal services are not rate limited but are monitored for "
                           "abuse.",
    "ci-cache": "The CI dependency cache is cleared every Sunday night.",
    "globex-sla": "Globex has a standard support plan with next-business-day responses.",
    "metrics-retention": "Prometheus metrics are kept for 30 days, then downsampled in Thanos.",
    "db-upgrade": "The database major version upgrade to PostgreSQL 17 needs a maintenance "
                  "window.",
    "frontend-tests": "Frontend end-to-end tests run in Playwright against the staging "
                      "environment.",
    "k8s-nodes": "Kubernetes worker nodes are recycled every 30 days for patching.",
    "email-bounces": "Bounced emails are logged and the address is suppressed after three "
                     "bounces.",
    "gpu-scheduling": "GPU jobs are scheduled by Slurm on the research cluster.",
    "office-hours": "The Lisbon office is open from 08:00 to 19:00 on weekdays.",
}

# question -> keys of the facts answering it
QUESTIONS: Final[Mapping[str, Sequence[str]]] = {
    "when do the production database backups happen and how long are they kept":
        ["pg-backup"],
    "how often are JWT signing keys rotated": ["jwt-rotation"],
    "what day is the on-call handover": ["oncall-handover"],
    "which eviction policy does the redis cache use": ["redis-maxmemory"],
    "when is the deploy freeze over the holidays": ["deploy-freeze"],
    "how many requests per minute can a token make to the public API": ["api-rate-limit"],
    "what is the arm64 CI runner pool called": ["ci-runner"],
    "what uptime did we promise Acme in the contract": ["customer-acme-sla"],
    "how long do we retain application logs": ["logging-retention"],
    "how long does a database failover to the replica take": ["db-failover"],
    "which VPN do remote employees use": ["vpn-provider"],
    "minimum password length for employees": ["password-policy"],
    "where do messages go after failing repeatedly": ["queue-dead-letter"],
    "what time is the daily standup": ["timezone-standup"],
    "which framework is the customer dashboard built with": ["frontend-framework"],
    "when are uploaded objects moved to glacier": ["s3-lifecycle"],
    "which Kubernetes version runs in production": ["k8s-version"],
    "deadline for writing an incident postmortem": ["incident-postmortem"],
    "how are stale feature flags cleaned up": ["feature-flags"],
    "what powers product search": ["search-engine"],
    "which provider sends transactional emails": ["email-provider"],
    "who renews the TLS certificates and when": ["cert-renewal"],
    "monthly GPU budget of the machine learning team": ["gpu-budget"],
    "target Python version for backend services": ["python-version"],
    "where must European customer data be stored": ["data-residency"],
    "how does an alert page the on-call engineer": ["pager-tool"],
    "how many approvals does a pull request need before merging": ["code-review"],
    "how long is the product catalogue cached at the CDN": ["cache-ttl"],
    "how many checkouts per minute did the load test sustain": ["load-test"],
    "guest wifi password in the Lisbon office": ["office-wifi"],
}

# question -> near misses that are about its subject (graded 1, not 2)
PARTIAL: Final[Mapping[str, Sequence[str]]] = {
    "when do the production database backups happen and how long are they kept":
        ["staging-backup"],
    "what day is the on-call handover": ["oncall-pay"],
    "which eviction policy does the redis cache use": ["redis-sessions"],
    "when is the deploy freeze over the holidays": ["deploy-window"],
    "how long do we retain application logs": ["metrics-retention"],
    "monthly GPU budget of the machine learning team": ["gpu-scheduling"],
}


def recall_at(ranked: Sequence[str], relevant: Sequence[str], k: int = 10) -> float:
    """Share of the relevant items in the top ``k`` (out of at most ``k`` relevant)."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & set(relevant)) / min(k, len(relevant))


def ndcg_at(ranked: Sequence[str], gains: Mapping[str, float], k: int = 10) -> float:
    """Normalised discounted cumulative gain of ``ranked`` against graded ``gains``."""
    def dcg(values: Sequence[float]) -> float:
        return sum((math.pow(2.0, g) - 1) / math.log2(i + 2) for i, g in enumerate(values))

    ideal = dcg(sorted(gains.values(), reverse=True)[:k])
    if ideal == 0:
        return 0.0
    return dcg([gains.get(item, 0.0) for item in ranked[:k]]) / ideal

