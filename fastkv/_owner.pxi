# fastkv/_owner.pxi: included by _core.pyx (not yet written)
