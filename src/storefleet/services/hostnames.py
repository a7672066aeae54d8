"""Every store's address at the edge: its hostname (`<slug>.<base domain>`) and its custom
domains, and the routes that serve them.

- A slug comes from `nombre`: ASCII-folded, lowercase, `a-z0-9-`, at most 40 characters; a
  reserved name or one another store holds gets a suffix (`-2`, `-3`, ...). It is chosen once,
  when the store is registered, and kept until the store is deleted (renaming keeps it).
- A custom domain is checked (IDNA, length, no wildcard, no IP address, not under the base
  domain) and belongs to one store at most (the registry's primary key).
- Routes: a store that runs (deployed) is routed at its hostname and domains; `sync` makes the
  edge's route table say exactly that (the reconciler calls it on every pass).
"""

from __future__ import annotations

import ipaddress
import itertools
import logging
import random
import re
import unicodedata
from collections.abc import Iterable, Mapping, Sequence

import idna  # IDNA 2008 with UTS 46 mapping (already a dependency of httpx)
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from storefleet.edge.base import Edge
from storefleet.edge.routes import HOST_PATTERN, LABEL, MAX_HOST
from storefleet.errors import ConflictError, InvalidInputError, NotFoundError
from storefleet.registry.db import Registry
from storefleet.registry.models import DeployPhase, Store, StoreDomain

log = logging.getLogger(__name__)

SLUG_MAX = 40
MAX_DOMAINS = 10
# Names a store may never take: they are, or may become, the platform's own.
RESERVED = frozenset(
    {
        "acme", "admin", "api", "app", "assets", "auth", "billing", "ca", "cdn", "console",
        "control", "dashboard", "dev", "docs", "edge", "ftp", "help", "imap", "internal",
        "localhost", "login", "mail", "metrics", "ns1", "ns2", "pop", "root", "smtp", "static",
        "status", "storefleet", "support", "test", "www",
    }
)  # fmt: skip
# A store is routed while it is deployed (stopped on purpose too: the edge answers 502).
ROUTED_PHASES = (DeployPhase.DEPLOYED, DeployPhase.STOPPED)
_LABEL = re.compile(rf"^{LABEL}$")


class EdgeView(BaseModel):
    enabled: bool
    kind: str | None  # `caddy`
    alive: bool | None
    base_domain: str
    https_port: int | None
    http_port: int | None
    bind: str | None
    tls: str | None  # `internal CA` or `ACME (<email>)`
    routes: int  # hosts routed now (hostnames and custom domains)


def slug_of(nombre: str) -> str:
    """`Café Ñandú` -> `cafe-nandu`: ASCII-folded, lowercase, `a-z0-9-`, at most 40."""
    folded = unicodedata.normalize("NFKD", nombre).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^a-z0-9]+", "-", folded.lower()).strip("-")
    slug = slug[:SLUG_MAX].rstrip("-")
    return slug or "store"


def _candidates(base: str) -> Iterable[str]:
    if base not in RESERVED:
        yield base
    n = 2
    while True:
        suffix = f"-{n}"
        yield base[: SLUG_MAX - len(suffix)].rstrip("-") + suffix
        n += 1


def free_slug(session: Session, nombre: str, *, spread: int = 0) -> str:
    """The slug a new store named `nombre` gets (one registry read): the first free candidate,
    or with `spread` (a retry after losing a race for one) one of the first `spread + 1` free
    ones at random, so that many concurrent creates of one name do not all race for the same
    next candidate again."""
    base = slug_of(nombre)
    taken = set(session.scalars(select(Store.slug).where(Store.slug.like(f"{base[:30]}%"))))
    free = (c for c in _candidates(base) if c not in taken)
    pick = random.randrange(spread + 1) if spread else 0  # noqa: S311 (not a secret)
    return next(itertools.islice(free, pick, None))


def clean_domain(raw: str, base_domain: str) -> str:
    """A custom domain in its ASCII (IDNA) form, or InvalidInputError saying what is wrong."""
    text = raw.strip().rstrip(".").lower()

    def bad(why: str) -> InvalidInputError:
        return InvalidInputError(f"domain {raw!r}: {why}", code="bad_domain")

    if not text:
        raise bad("it is empty")
    if "*" in text:
        raise bad("a wildcard is not a domain a store can have")
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    else:
        raise bad("an IP address is not a domain")
    try:
        ascii_form = idna.encode(text, uts46=True).decode("ascii")
    except (idna.IDNAError, UnicodeError) as exc:
        raise bad(f"it is not a valid internationalised domain name ({exc})") from None
    labels = ascii_form.split(".")
    if len(labels) < 2:
        raise bad("it needs at least two labels (shop.example.com)")
    if not all(_LABEL.fullmatch(label) for label in labels):
        raise bad("each label is 1-63 letters, digits or hyphens, not starting or ending with -")
    if labels[-1].isdigit():
        raise bad("its last label can not be a number")
    if len(ascii_form) > MAX_HOST:
        raise bad(f"it is longer than {MAX_HOST} characters (in its ASCII form)")
    if ascii_form == base_domain or ascii_form.endswith("." + base_domain):
        raise bad(f"names under {base_domain} are the stores' own hostnames")
    if not HOST_PATTERN.fullmatch(ascii_form):  # pragma: no cover - the checks above imply it
        raise bad("it is not a routable host name")
    return ascii_form


class Hostnames:
    def __init__(self, registry: Registry, *, base_domain: str, edge: Edge | None) -> None:
        self.registry = registry
        self.base_domain = base_domain
        self.edge = edge

    def hostname(self, slug: str | None) -> str | None:
        return f"{slug}.{self.base_domain}" if slug else None

    def url(self, slug: str | None) -> str | None:
        host = self.hostname(slug)
        if host is None or self.edge is None:
            return None
        return self.edge.settings.url_of(host)

    def ensure_slug(self, store_id: str) -> str:
        """The store's slug, chosen now if it has none yet (a store older than hostnames)."""
        for _attempt in range(5):
            with self.registry.transaction() as session:
                store = session.get(Store, store_id)
                if store is None:
                    raise NotFoundError(f"store {store_id} does not exist", store_id=store_id)
                if store.slug:
                    return store.slug
                slug = free_slug(session, store.nombre)
                taken = session.scalar(select(Store.id).where(Store.slug == slug))
                if taken is None:
                    store.slug = slug
                    return slug
        raise ConflictError(f"no free hostname for store {store_id}", code="concurrent_change")

    def domains_of(self, session: Session, store_ids: Sequence[str] | None) -> dict[str, list[str]]:
        """The custom domains of these stores (None: of every store; only those with any)."""
        found: dict[str, list[str]] = {sid: [] for sid in store_ids or ()}
        query = select(StoreDomain.store_id, StoreDomain.domain).order_by(StoreDomain.domain)
        if store_ids is not None:
            if not store_ids:
                return found
            query = query.where(StoreDomain.store_id.in_(list(store_ids)))
        for sid, domain in session.execute(query):
            found.setdefault(sid, []).append(domain)
        return found

    def hosts_of(self, store_id: str) -> list[str]:
        """The hostname and the custom domains the store is served at."""
        slug = self.ensure_slug(store_id)
        with self.registry.transaction() as session:
            domains = self.domains_of(session, [store_id])[store_id]
        return [f"{slug}.{self.base_domain}", *domains]

    def set_domains(self, session: Session, store_id: str, raw: Sequence[str]) -> set[str]:
        """Give the store exactly these custom domains (inside the caller's transaction);
        returns the domains it no longer has."""
        wanted: list[str] = []
        for item in raw:
            domain = clean_domain(item, self.base_domain)
            if domain not in wanted:
                wanted.append(domain)
        if len(wanted) > MAX_DOMAINS:
            raise InvalidInputError(
                f"a store has at most {MAX_DOMAINS} custom domains", code="bad_domain"
            )
        if wanted:
            owners = session.execute(
                select(StoreDomain.domain, StoreDomain.store_id).where(
                    StoreDomain.domain.in_(wanted)
                )
            )
            for domain, owner in owners:
                if owner != store_id:
                    raise ConflictError(
                        f"domain {domain!r} belongs to another store", code="domain_taken"
                    )
        current = set(self.domains_of(session, [store_id])[store_id])
        gone = current - set(wanted)
        if gone:
            session.execute(
                delete(StoreDomain).where(
                    StoreDomain.store_id == store_id, StoreDomain.domain.in_(gone)
                )
            )
        for domain in wanted:
            if domain not in current:
                session.add(StoreDomain(domain=domain, store_id=store_id))
        return gone

    # -- routes ---------------------------------------------------------------------------

    def publish(self, store_id: str) -> list[str]:
        """Route the store's hostname and domains to it; returns them."""
        assert self.edge is not None
        hosts = self.hosts_of(store_id)
        for host in hosts:
            self.edge.routes.publish(host, store_id)
        return hosts

    def unpublish(self, store_id: str, hosts: Iterable[str] | None = None) -> None:
        """Remove every route to the store (or just `hosts`)."""
        assert self.edge is not None
        table = self.edge.routes.table()
        for host, target in table.items():
            if target == store_id and (hosts is None or host in hosts):
                self.edge.routes.unpublish(host)

    def wanted_routes(self) -> dict[str, str]:
        """host -> store id for every store that should be routed now."""
        with self.registry.transaction() as session:
            stores = list(
                session.execute(select(Store.id, Store.slug).where(Store.phase.in_(ROUTED_PHASES)))
            )
            domains = self.domains_of(session, [sid for sid, _ in stores])
        wanted: dict[str, str] = {}
        for sid, slug in stores:
            if slug:
                wanted[f"{slug}.{self.base_domain}"] = sid
            for domain in domains[sid]:
                wanted[domain] = sid
        return wanted

    def sync(self, busy: Iterable[str] = ()) -> tuple[int, int]:
        """Make the route table what the registry says (stores in `busy` have an operation
        running: left alone). Returns (routes published, routes removed)."""
        if self.edge is None:
            return 0, 0
        skip = set(busy)
        wanted = self.wanted_routes()
        have = self.edge.routes.table()
        added = removed = 0
        for host, sid in wanted.items():
            if sid not in skip and have.get(host) != sid:
                self.edge.routes.publish(host, sid)
                added += 1
        for host, sid in have.items():
            if sid not in skip and host not in wanted:
                self.edge.routes.unpublish(host)
                removed += 1
        if added or removed:
            log.info("edge routes: %d published, %d removed", added, removed)
        return added, removed

    def approves(self, domain: str) -> bool:
        """The edge's on-demand TLS check: a certificate only for a host that is routed now
        (a deployed store's hostname or domain). One `stat`, no registry read."""
        if self.edge is None or not HOST_PATTERN.fullmatch(domain):
            return False
        return (self.edge.routes.hosts / domain).is_symlink()

    def routed(self, store_ids: Iterable[str]) -> Mapping[str, bool]:
        """Whether each store has a route (its hostname) in the edge's table."""
        table = set(self.edge.routes.table().values()) if self.edge else set()
        return {sid: sid in table for sid in store_ids}

    def ca_pem(self) -> bytes | None:
        if self.edge is None:
            return None
        pem = self.edge.ca_pem()
        return pem.encode() if pem is not None else None

    def view(self) -> EdgeView:
        edge = self.edge
        if edge is None:
            return EdgeView(
                enabled=False, kind=None, alive=None, base_domain=self.base_domain,
                https_port=None, http_port=None, bind=None, tls=None, routes=0,
            )  # fmt: skip
        settings = edge.settings
        email = settings.acme_email
        return EdgeView(
            enabled=True,
            kind=edge.name,
            alive=edge.alive(),
            base_domain=self.base_domain,
            https_port=settings.https_port,
            http_port=settings.http_port,
            bind=settings.bind,
            tls=f"ACME ({email})" if email else "internal CA",
            routes=len(edge.routes.table()),
        )
