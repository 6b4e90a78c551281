# Declarations of pyx/include/percpu.h and the headers it includes (shipped
# in percpu/include/).
# Cython code: `from percpu.cpercpu cimport pc_current_cpu, pc_percpu_add, ...`
# and compile with include_dirs=[percpu.get_include()].
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from cpython.pycapsule cimport PyCapsule_Import

cdef extern from "percpu.h" nogil:
    int PC_CACHELINE
    int PC_RELAXED
    int PC_ACQUIRE
    int PC_RELEASE
    int PC_ACQ_REL
    int PC_SEQ_CST
    int PC_MAX_THREADS
    int PC_HAVE_RSEQ_ASM
    int PC_CPU_UNINIT
    int PC_CPU_RSEQ
    int PC_CPU_GETCPU
    int PC_CPU_THREAD
    int PC_CPU_MM_CID
    int PC_MB_NONE
    int PC_MB_EXPEDITED
    int PC_MB_EXPEDITED_RSEQ
    int PC_MB_QUERY
    int PC_MB_PRIVATE_EXPEDITED
    int PC_MB_REGISTER_PRIVATE_EXPEDITED
    int PC_MB_PRIVATE_EXPEDITED_RSEQ
    int PC_MB_REGISTER_PRIVATE_EXPEDITED_RSEQ

    bint PC_LIKELY(bint x)
    bint PC_UNLIKELY(bint x)
    size_t pc_round_up(size_t n, size_t align)
    void *pc_aligned_zalloc(size_t size)
    void pc_cpu_relax()

    int32_t pc_load_i32(const int32_t *p, int mo)
    void pc_store_i32(int32_t *p, int32_t v, int mo)
    int32_t pc_exchange_i32(int32_t *p, int32_t v, int mo)
    bint pc_cas_i32(int32_t *p, int32_t *expected, int32_t desired, int mo_ok, int mo_fail)
    int32_t pc_fetch_add_i32(int32_t *p, int32_t v, int mo)
    int32_t pc_add_fetch_i32(int32_t *p, int32_t v, int mo)
    int64_t pc_load_i64(const int64_t *p, int mo)
    void pc_store_i64(int64_t *p, int64_t v, int mo)
    int64_t pc_exchange_i64(int64_t *p, int64_t v, int mo)
    bint pc_cas_i64(int64_t *p, int64_t *expected, int64_t desired, int mo_ok, int mo_fail)
    int64_t pc_fetch_add_i64(int64_t *p, int64_t v, int mo)
    int64_t pc_add_fetch_i64(int64_t *p, int64_t v, int mo)
    uint64_t pc_load_u64(const uint64_t *p, int mo)
    void pc_store_u64(uint64_t *p, uint64_t v, int mo)
    uint64_t pc_fetch_add_u64(uint64_t *p, uint64_t v, int mo)
    void *pc_load_ptr(void * const *p, int mo)
    void pc_store_ptr(void **p, void *v, int mo)
    void *pc_exchange_ptr(void **p, void *v, int mo)
    bint pc_cas_ptr(void **p, void **expected, void *desired, int mo_ok, int mo_fail)
    void pc_fence(int mo)
    void pc_compiler_barrier()

    int64_t pc_now_ns()

    # The process-wide choice of the cpu-id source and fast paths (one per
    # process, in the registry; see percpu/cpu.h). A module uses it through
    # its own copy, adopted by pc_registry_import() below, or by the slow
    # path of an object that carries the registry.
    ctypedef struct pc_proc:
        int32_t mode            # PC_CPU_*
        int32_t nr_cpus         # slots per object for ids; one shared slot follows
        int32_t sections        # the per-CPU fast paths run rseq critical sections
        int32_t refs_sections   # references' fast paths too
        int32_t mm_cid_seen     # the kernel maintains mm_cid
        int32_t bound           # slots [0, bound) may have been written (read it with pc_slots_in_use)
        int32_t shared_used     # a shared slot may have been written
    pc_proc *pc_adopted(pc_proc *proc)
    int32_t pc_slot_raise(pc_proc *p, uint32_t id)
        # makes slot `id` (< nr_cpus) usable: code that writes a slot by an
        # index of its own (not through the fast paths) raises the bound first
    int32_t pc_slots_in_use(pc_proc *p)
    int64_t pc_slots_sum(pc_proc *p, const char *base, size_t stride)
    int pc_possible_cpus_read()
    int pc_online_cpus()
    int pc_allowed_cpus()

    int pc_nr_cpus()
    int pc_cpu_source()
    const char *pc_cpu_source_name()
    int pc_current_cpu()
    int pc_current_slot()
    bint pc_rseq_live()
    int pc_rseq_add_i64(char *base, size_t stride, int64_t v)
    int pc_rseq_add_if_i64(const int32_t *mode, char *base, size_t stride, int64_t v)
    void pc_percpu_add(char *base, size_t stride, int64_t v)
    int64_t pc_percpu_sum(const char *base, size_t stride)
    long pc_membarrier(int cmd, unsigned flags)

    # Known-bad variants for mutation testing (percpu/mutant.h): pc_mutant()
    # is the constant 0 unless the build defines PERCPU_MUTANTS.
    int PC_MUTANTS_BUILT
    enum:
        PC_MUT_NONE
        PC_MUT_NO_GRACE_PERIOD
        PC_MUT_SECTION_SKIPPED
        PC_MUT_RELEASE_KEEPS_COUNT
        PC_MUT_TRYGET_LIVE_AFTER_KILL
        PC_MUT_COUNT
    const char *pc_mutant_names[]
    bint pc_mutant(int32_t m)

    ctypedef struct pc_thread_rec:
        uint64_t seq
        int32_t index
        int32_t in_use

    ctypedef struct pc_fork_node:
        pass

    ctypedef struct pc_registry:
        pc_proc proc
        int32_t high_water
        int32_t live
        int32_t membarrier
        int32_t grace_periods
        pc_thread_rec recs[1]

    pc_thread_rec *pc_thread_record(pc_registry *reg)
    void pc_section_enter(pc_registry *reg, pc_thread_rec *rec)
    void pc_section_exit(pc_thread_rec *rec)
    void pc_synchronize(pc_registry *reg)
    void pc_fork_track(pc_registry *reg, pc_fork_node *n, void *mutex, int32_t *spin)
    void pc_fork_untrack(pc_registry *reg, pc_fork_node *n)
    void pc_fork_gate_enter(pc_registry *reg)
    void pc_fork_gate_leave(pc_registry *reg)
    bint pc_refs_rseq(const pc_registry *reg)
    pc_proc *pc_adopt_registry(pc_registry *reg)



cdef inline pc_registry *pc_registry_import() except NULL:
    """The process-wide thread registry owned by percpu._core (call with the GIL,
    e.g. at module import, and keep the pointer). Also adopts the process's
    cpu-id choice into this module: call it before the raw per-CPU API
    (pc_percpu_add, pc_percpu_sum, pc_current_slot, pc_rseq_live, ...)."""
    cdef pc_registry *reg = <pc_registry *>PyCapsule_Import(b"percpu._core._registry", 0)
    if reg != NULL:
        pc_adopt_registry(reg)
    return reg
