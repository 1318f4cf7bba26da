"""The e2e test's witness: records, for each request LiteLLM finished, the
reservation id it carried and LiteLLM's own ``kwargs["response_cost"]``
(success) or the failure, one JSON line each, in ``$WITNESS_FILE``. The test
compares edge-budget's spend with these values."""

import json
import os

from litellm.integrations.custom_logger import CustomLogger

from edge_budget_callback import RESERVATION_HEADER, header


class Witness(CustomLogger):
    def _write(self, record):
        with open(os.environ["WITNESS_FILE"], "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    async def async_log_success_event(self, kwargs, response_obj, start_time, end_time):
        self._write(
            {
                "outcome": "success",
                "reservation_id": header(kwargs, RESERVATION_HEADER),
                "response_cost": kwargs.get("response_cost"),
                "stream": bool(kwargs.get("stream")),
            }
        )

    async def async_log_failure_event(self, kwargs, response_obj, start_time, end_time):
        self._write({"outcome": "failure", "reservation_id": header(kwargs, RESERVATION_HEADER)})


witness = Witness()
