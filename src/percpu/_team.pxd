# The native thread team of the benchmark lab and the tests
# (pyx/include/percpu/team.h). Not part of the library: the core modules never
# cimport it; percpu._lab and percpu._workloads do.
from libc.stdint cimport int64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

from percpu.cpercpu cimport PC_MAX_THREADS

cdef extern from "percpu/team.h" nogil:
    ctypedef void (*pc_kernel_fn)(void *arg, int tid, int64_t ops, int64_t *done) noexcept nogil
    enum:
        PC_TEAM_POLL
    ctypedef struct pc_team:
        int nthreads
        int pin
        int64_t ops
        pc_kernel_fn fn
        void *arg
        int64_t duration_ns
        int64_t interrupt_ns
        int64_t wall_ns
        int64_t *done
        int64_t *thread_ns
    int pc_team_run(pc_team *t)
    bint pc_team_expired()
    int64_t pc_team_round_end(int64_t i, int64_t ops)


cdef inline int64_t pc_run_team(pc_kernel_fn fn, void *arg, int threads, int64_t ops,
                                int64_t *done, bint pin, int64_t duration_ns=0,
                                int64_t interrupt_ns=0) except -1:
    """Runs ``fn`` on ``threads`` native threads, ``ops`` each, without the GIL
    (call it holding the GIL). ``done`` (``threads`` entries) receives each
    thread's completed ops, or NULL. ``duration_ns`` > 0: kernels that poll
    ``pc_team_expired()`` stop that long after the start (``ops`` is then a
    cap). ``interrupt_ns`` > 0: every thread is interrupted every
    ``interrupt_ns`` by a signal whose handler pauses it (a preemption at a
    random point; it aborts any rseq section it lands in). Returns the wall
    time in ns, from the barrier's release to the last thread's finish."""
    cdef pc_team team
    cdef int err
    cdef int64_t *own = NULL
    if threads <= 0 or threads > PC_MAX_THREADS:
        raise ValueError(f"threads must be in 1..{PC_MAX_THREADS}, not {threads}")
    if ops < 0:
        raise ValueError(f"ops must be >= 0, not {ops}")
    if duration_ns < 0 or interrupt_ns < 0:
        raise ValueError(f"duration_ns and interrupt_ns must be >= 0, not {duration_ns} "
                         f"and {interrupt_ns}")
    if done == NULL:
        own = <int64_t *>calloc(threads, sizeof(int64_t))
        if own == NULL:
            raise MemoryError()
        done = own
    memset(&team, 0, sizeof(team))
    team.nthreads = threads
    team.pin = pin
    team.ops = ops
    team.fn = fn
    team.arg = arg
    team.done = done
    team.duration_ns = duration_ns
    team.interrupt_ns = interrupt_ns
    with nogil:
        err = pc_team_run(&team)
    free(own)
    if err:
        raise OSError(err, "percpu: cannot start the thread team")
    return team.wall_ns
