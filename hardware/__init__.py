"""What the machine in front of us can do: usable CPUs (affinity and cgroup quota), CPU features, measured rates.

Shared by every stage and importing none of them.
"""
