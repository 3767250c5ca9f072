"""Type stubs for fastkv._core (the compiled tables).

Each section belongs to one part of the core; keep it in step with the code.
"""

from fastkv._errors import ClosedError as ClosedError

# --- FrozenTable (_frozen.pxi) ---

# --- LockedTable (_locked.pxi) ---

# --- OwnerTable, Agent (_owner.pxi) ---
