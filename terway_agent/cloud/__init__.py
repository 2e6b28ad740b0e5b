"""The Alibaba Cloud side of the agent.

* :mod:`terway_agent.cloud.client` -- :class:`CloudClient` (ECS OpenAPI for trio),
  :class:`EniInfo`, :class:`VSwitchInfo`;
* :mod:`terway_agent.cloud.settings` -- :class:`CloudSettings`;
* :mod:`terway_agent.cloud.metadata` -- :class:`MetadataClient`;
* :mod:`terway_agent.cloud.limits` -- :class:`InstanceLimits` and the pod-limit formulas;
* :mod:`terway_agent.cloud.credentials` -- the credentials chain;
* :mod:`terway_agent.cloud.errors` -- typed cloud errors;
* :mod:`terway_agent.cloud.emulator` -- the local cloud used by tests and the demo.

Nothing is imported here so that importing a submodule stays cheap.
"""
