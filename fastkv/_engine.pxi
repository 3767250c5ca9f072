# fastkv/_engine.pxi: included by _core.pyx (not yet written)
