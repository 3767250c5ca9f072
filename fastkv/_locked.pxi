# fastkv/_locked.pxi: included by _core.pyx (not yet written)
