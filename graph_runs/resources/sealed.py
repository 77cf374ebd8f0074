"""Resources that no run config can change: what a run launched by hand gets is what we bound.

Dagster turns the values bound to a ``ConfigurableResource`` into defaults of the run-config
schema, so anyone who may launch a run (the launchpad, GraphQL ``launchRun``, a partition
run) could send the API token to a server of theirs (``execution_api.base_url``), point the
run at another database, or set the clock. ``sealed`` gives Dagster a resource definition
whose config schema is empty: a run config that names any field is refused before the run
exists. ``EnvVar`` fields are still resolved in the process that uses them, when the
resource is initialised, so a secret's value is never part of the definitions.
"""

from typing import Any

import dagster as dg


class SealedResource(dg.ResourceDefinition):
    """A resource definition with no config: it yields ``resource``, its env vars resolved."""

    def __init__(self, resource: dg.ConfigurableResource) -> None:
        super().__init__(
            resource_fn=lambda _context: resolved(resource),
            config_schema={},
            description=(type(resource).__doc__ or "").strip().splitlines()[0],
        )
        self.resource = resource


def resolved(resource: dg.ConfigurableResource) -> dg.ConfigurableResource:
    """A copy of ``resource`` with each ``EnvVar`` replaced by its value, nested ones too."""
    values: dict[str, Any] = {}
    for name in type(resource).model_fields:
        value = getattr(resource, name)
        if isinstance(value, dg.EnvVar):
            value = value.get_value()
        elif isinstance(value, dg.ConfigurableResource):
            value = resolved(value)
        values[name] = value
    return type(resource)(**values)


def sealed(resources: dict[str, dg.ConfigurableResource]) -> dict[str, SealedResource]:
    """Every resource of the code location, sealed."""
    return {key: SealedResource(resource) for key, resource in resources.items()}
