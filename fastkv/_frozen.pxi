# fastkv/_frozen.pxi: included by _core.pyx (not yet written)
