from __future__ import annotations

import pytest

from storefleet.registry.models import DeployPhase
from storefleet.runtime.base import Observed
from storefleet.services.status import status_word


@pytest.mark.parametrize(
    ("phase", "observed", "word"),
    [
        (DeployPhase.DEPLOYED, Observed.RUNNING, "running"),
        (DeployPhase.DEPLOYED, Observed.DEGRADED, "degraded"),
        (DeployPhase.DEPLOYED, Observed.STOPPED, "stopped"),
        (DeployPhase.DEPLOYED, Observed.ABSENT, "error"),
        (DeployPhase.NOT_DEPLOYED, Observed.ABSENT, "not_deployed"),
        (DeployPhase.NOT_DEPLOYED, Observed.RUNNING, "error"),
        (DeployPhase.DEPLOYING, Observed.ABSENT, "deploying"),
        (DeployPhase.UNDEPLOYING, Observed.RUNNING, "undeploying"),
    ],
)
def test_status_word_is_intent_checked_against_observation(
    phase: str, observed: Observed, word: str
) -> None:
    assert status_word(phase, observed) == word
