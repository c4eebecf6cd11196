"""gunicorn's own log lines (start, workers, signals, errors) sent through the
root logger that ``logs.setup`` configured, so they come out in the chosen
format (JSON lines when ``log_format = "json"``) like every other line."""

from __future__ import annotations

from gunicorn.glogging import Logger


class ThroughRoot(Logger):
    """gunicorn's Logger without handlers of its own: its records propagate to the root."""

    def setup(self, cfg):
        super().setup(cfg)
        for logger in (self.error_log, self.access_log):
            for handler in list(logger.handlers):
                logger.removeHandler(handler)
            logger.propagate = True
