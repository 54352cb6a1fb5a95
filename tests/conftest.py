"""Import every capability package first, so the registries they extend (layer swaps, inject
configs) are complete when contract tests parametrize over them."""

import qfault.mitigation  # noqa: F401  (registers the stuck-at inject config)
import qfault.systolic  # noqa: F401  (registers the "systolic" layer swap)
