"""Test helpers, a module per kind of help; everything is importable from `helpers` itself."""

from helpers.backends import BackLink, add_order, back_of, orders
from helpers.browser import CHROMIUM, FLAGS, chromium, sign_in, watch_dialogs
from helpers.cleanup import (
    TEST_LABEL,
    count_supervisors,
    kill_edge_process,
    kill_store_processes,
    remove_docker_objects,
    servers_in,
)
from helpers.databases import PG_ADMIN_URL, pg_database
from helpers.docs import assert_docs_offline
from helpers.edge import EdgeClient, edge_env
from helpers.ports import free_port, next_port_range
from helpers.registry import add_bare_stores, crashed_operation, new_store
from helpers.servers import FAST_RECOVERY, REPO, Server, cli, country_id, store_body
from helpers.waiting import after_a_reconciler_pass, wait_for, wait_for_status

__all__ = [
    "CHROMIUM",
    "FAST_RECOVERY",
    "FLAGS",
    "PG_ADMIN_URL",
    "REPO",
    "TEST_LABEL",
    "BackLink",
    "EdgeClient",
    "Server",
    "add_bare_stores",
    "add_order",
    "after_a_reconciler_pass",
    "assert_docs_offline",
    "back_of",
    "chromium",
    "cli",
    "count_supervisors",
    "country_id",
    "crashed_operation",
    "edge_env",
    "free_port",
    "kill_edge_process",
    "kill_store_processes",
    "new_store",
    "next_port_range",
    "orders",
    "pg_database",
    "remove_docker_objects",
    "servers_in",
    "sign_in",
    "store_body",
    "wait_for",
    "wait_for_status",
    "watch_dialogs",
]
