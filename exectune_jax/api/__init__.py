"""Everything that talks to a black-box model: providers, the call pool, cache and ledger."""

from exectune_jax.api.pool import BudgetExceeded, Pool, Request, Result, open_pool

__all__ = ["BudgetExceeded", "Pool", "Request", "Result", "open_pool"]
