/*
 * cffi (ABI mode) declarations of the Linux KVM userspace API that pyvmm uses,
 * for arm64. Layouts follow include/uapi/linux/kvm.h and
 * arch/arm64/include/uapi/asm/kvm.h of Linux 7.3; tests/host/test_uapi_probe.py
 * compiles a C probe against Debian's arm64 UAPI headers and checks every size,
 * offset, constant and request number declared here or derived from it.
 *
 * cffi cannot declare __int128, so struct kvm_regs is not declared: core
 * register offsets live in pyvmm/arm64/regs.py (CORE_OFFSETS), checked by the same probe.
 */

/* ---- libc ---------------------------------------------------------------- */
int ioctl(int fd, unsigned long request, ...);
/* The vCPU kick signal's handler (pyvmm/machine/kick.py): glibc's signal(),
 * which any thread may call (Python's signal module only lets the main thread
 * install handlers), and abs(), a libc function of one int without side
 * effects, used as the handler that does nothing. */
typedef void (*sighandler_t)(int);
sighandler_t signal(int signum, sighandler_t handler);
int abs(int j);
/* Mapping a snapshot file's guest RAM over the anonymous RAM at its fixed
 * address (pyvmm/memory.py, map_file): Python's mmap module cannot map at an
 * address. off_t is 64 bits on every platform pyvmm runs on. */
void *mmap(void *addr, size_t length, int prot, int flags, int fd, long offset);
/* System calls glibc has no wrapper for (pyvmm/memory.py: fsopen, fsconfig and
 * fsmount make the private tmpfs instance shared guest RAM lives on). Every
 * argument after the number is passed as a long or a pointer. */
long syscall(long number, ...);

/* ---- libatomic ------------------------------------------------------------ */
/* A full memory barrier for the virtqueues' event indices
 * (pyvmm/devices/virtqueue.py, fence): C11's atomic_thread_fence, which GCC's
 * libatomic also exports as a function (memory_order_seq_cst is 5). */
void atomic_thread_fence(int order);

/* ---- vCPU run area (mmapped from the vCPU fd) ---------------------------- */
struct kvm_debug_exit_arch {
    uint32_t hsr;
    uint32_t hsr_high;
    uint64_t far;
};

struct kvm_run {
    uint8_t request_interrupt_window;
    uint8_t immediate_exit;
    uint8_t padding1[6];
    uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection;
    uint8_t if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    union {
        struct { uint64_t hardware_exit_reason; } hw;
        struct { uint64_t hardware_entry_failure_reason; uint32_t cpu; } fail_entry;
        struct { struct kvm_debug_exit_arch arch; } debug;
        struct {
            uint64_t phys_addr;
            uint8_t data[8];
            uint32_t len;
            uint8_t is_write;
        } mmio;
        struct {
            uint64_t nr;
            uint64_t args[6];
            uint64_t ret;
            uint64_t flags;
        } hypercall;
        struct { uint32_t suberror; uint32_t ndata; uint64_t data[16]; } internal;
        struct {
            uint32_t type;
            uint32_t ndata;
            uint64_t data[16];
        } system_event;
        struct { uint64_t esr_iss; uint64_t fault_ipa; } arm_nisv;
        struct { uint64_t flags; uint64_t gpa; uint64_t size; } memory_fault;
        struct { uint64_t flags; uint64_t esr; uint64_t gva; uint64_t gpa; } arm_sea;
        char padding[256];
    };
    uint64_t kvm_valid_regs;
    uint64_t kvm_dirty_regs;
    union { char padding[2048]; } s;
};

/* ---- ioctl arguments ------------------------------------------------------ */
struct kvm_userspace_memory_region {
    uint32_t slot;
    uint32_t flags;
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
};

struct kvm_one_reg {
    uint64_t id;
    uint64_t addr;
};

struct kvm_reg_list {
    uint64_t n;
    uint64_t reg[];
};

struct kvm_vcpu_init {
    uint32_t target;
    uint32_t features[7];
};

struct kvm_device_attr {
    uint32_t flags;
    uint32_t group;
    uint64_t attr;
    uint64_t addr;
};

struct kvm_create_device {
    uint32_t type;
    uint32_t fd;
    uint32_t flags;
};

struct kvm_irq_level {
    union { uint32_t irq; int32_t status; };
    uint32_t level;
};

struct kvm_mp_state {
    uint32_t mp_state;
};

struct kvm_vcpu_events {
    struct {
        uint8_t serror_pending;
        uint8_t serror_has_esr;
        uint8_t ext_dabt_pending;
        uint8_t pad[5];
        uint64_t serror_esr;
    } exception;
    uint32_t reserved[12];
};

struct kvm_arm_counter_offset {
    uint64_t counter_offset;
    uint64_t reserved;
};

struct kvm_enable_cap {
    uint32_t cap;
    uint32_t flags;
    uint64_t args[4];
    uint8_t pad[64];
};

struct kvm_irqfd {
    uint32_t fd;
    uint32_t gsi;
    uint32_t flags;
    uint32_t resamplefd;
    uint8_t pad[16];
};

struct kvm_ioeventfd {
    uint64_t datamatch;
    uint64_t addr;
    uint32_t len;
    int32_t fd;
    uint32_t flags;
    uint8_t pad[36];
};

/* GSI routing (KVM_SET_GSI_ROUTING, KVM_CAP_IRQ_ROUTING): virtio-pci's MSI-X
 * vectors as MSIs through the vGIC ITS beside the SPIs' irqchip routes
 * (pyvmm/machine/gsi_routes.py). The entry's union is declared with the two
 * members pyvmm fills and its 32-byte pad (the UAPI's size). */
struct kvm_irq_routing_irqchip {
    uint32_t irqchip;
    uint32_t pin;
};

struct kvm_irq_routing_msi {
    uint32_t address_lo;
    uint32_t address_hi;
    uint32_t data;
    uint32_t devid;
};

struct kvm_irq_routing_entry {
    uint32_t gsi;
    uint32_t type;
    uint32_t flags;
    uint32_t pad;
    union {
        struct kvm_irq_routing_irqchip irqchip;
        struct kvm_irq_routing_msi msi;
        uint32_t pad[8];
    } u;
};

struct kvm_irq_routing {
    uint32_t nr;
    uint32_t flags;
    struct kvm_irq_routing_entry entries[];
};

/* ---- constants (values from the 7.3 UAPI; checked by the probe) ---------- */
#define KVMIO 0xAE
#define KVM_API_VERSION 12

/* exit reasons handled or recognised on arm64 */
#define KVM_EXIT_UNKNOWN 0
#define KVM_EXIT_EXCEPTION 1
#define KVM_EXIT_HYPERCALL 3
#define KVM_EXIT_DEBUG 4
#define KVM_EXIT_MMIO 6
#define KVM_EXIT_SHUTDOWN 8
#define KVM_EXIT_FAIL_ENTRY 9
#define KVM_EXIT_INTR 10
#define KVM_EXIT_INTERNAL_ERROR 17
#define KVM_EXIT_SYSTEM_EVENT 24
#define KVM_EXIT_ARM_NISV 28
#define KVM_EXIT_MEMORY_FAULT 39
#define KVM_EXIT_ARM_SEA 41

#define KVM_SYSTEM_EVENT_SHUTDOWN 1
#define KVM_SYSTEM_EVENT_RESET 2
#define KVM_SYSTEM_EVENT_CRASH 3
#define KVM_SYSTEM_EVENT_WAKEUP 4
#define KVM_SYSTEM_EVENT_SUSPEND 5

/* mp states */
#define KVM_MP_STATE_RUNNABLE 0
#define KVM_MP_STATE_STOPPED 5
#define KVM_MP_STATE_SUSPENDED 10

/* capabilities */
#define KVM_CAP_IRQCHIP 0
#define KVM_CAP_USER_MEMORY 3
#define KVM_CAP_NR_VCPUS 9
#define KVM_CAP_NR_MEMSLOTS 10
#define KVM_CAP_IRQ_ROUTING 25
#define KVM_CAP_IRQFD 32
#define KVM_CAP_IOEVENTFD 36
#define KVM_CAP_VCPU_EVENTS 41
#define KVM_CAP_MAX_VCPUS 66
#define KVM_CAP_ONE_REG 70
#define KVM_CAP_READONLY_MEM 81
#define KVM_CAP_ARM_PSCI 87
#define KVM_CAP_DEVICE_CTRL 89
#define KVM_CAP_ARM_EL1_32BIT 93
#define KVM_CAP_ARM_PSCI_0_2 102
#define KVM_CAP_MSI_DEVID 131
#define KVM_CAP_CHECK_EXTENSION_VM 105
#define KVM_CAP_ARM_PMU_V3 126
#define KVM_CAP_VCPU_ATTRIBUTES 127
#define KVM_CAP_MAX_VCPU_ID 128
#define KVM_CAP_IMMEDIATE_EXIT 136
#define KVM_CAP_ARM_VM_IPA_SIZE 165
#define KVM_CAP_ARM_SVE 170
#define KVM_CAP_ARM_PTRAUTH_ADDRESS 171
#define KVM_CAP_ARM_PTRAUTH_GENERIC 172
#define KVM_CAP_ARM_IRQ_LINE_LAYOUT_2 174
#define KVM_CAP_ARM_NISV_TO_USER 177
#define KVM_CAP_ARM_INJECT_EXT_DABT 178
#define KVM_CAP_ARM_MTE 205
#define KVM_CAP_SYSTEM_EVENT_DATA 215
#define KVM_CAP_ARM_SYSTEM_SUSPEND 216
#define KVM_CAP_COUNTER_OFFSET 227
#define KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 168
#define KVM_CAP_DIRTY_LOG_RING 192
#define KVM_CAP_DIRTY_LOG_RING_ACQ_REL 223
#define KVM_CAP_ARM_EL2 240
#define KVM_CAP_ARM_EL2_E2H0 241
#define KVM_CAP_ARM_CACHEABLE_PFNMAP_SUPPORTED 243
#define KVM_CAP_ARM_PMU_V3_STRICT 251

/* vCPU feature bits (kvm_vcpu_init.features[0]) */
#define KVM_ARM_VCPU_POWER_OFF 0
#define KVM_ARM_VCPU_EL1_32BIT 1
#define KVM_ARM_VCPU_PSCI_0_2 2
#define KVM_ARM_VCPU_PMU_V3 3
#define KVM_ARM_VCPU_SVE 4
#define KVM_ARM_VCPU_PTRAUTH_ADDRESS 5
#define KVM_ARM_VCPU_PTRAUTH_GENERIC 6
#define KVM_ARM_VCPU_HAS_EL2 7
#define KVM_ARM_VCPU_HAS_EL2_E2H0 8
#define KVM_ARM_VCPU_PMU_V3_STRICT 9

/* devices */
#define KVM_CREATE_DEVICE_TEST 1
#define KVM_DEV_TYPE_ARM_VGIC_V2 5
#define KVM_DEV_TYPE_ARM_VGIC_V3 7
#define KVM_DEV_TYPE_ARM_VGIC_ITS 8
#define KVM_VGIC_V3_ADDR_TYPE_DIST 2
#define KVM_VGIC_V3_ADDR_TYPE_REDIST 3
#define KVM_VGIC_V3_ADDR_TYPE_REDIST_REGION 5
#define KVM_VGIC_ITS_ADDR_TYPE 4
#define KVM_DEV_ARM_VGIC_GRP_ADDR 0
#define KVM_DEV_ARM_VGIC_GRP_DIST_REGS 1
#define KVM_DEV_ARM_VGIC_GRP_NR_IRQS 3
#define KVM_DEV_ARM_VGIC_GRP_CTRL 4
#define KVM_DEV_ARM_VGIC_GRP_REDIST_REGS 5
#define KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS 6
#define KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO 7
#define KVM_DEV_ARM_VGIC_CTRL_INIT 0
/* the ITS's state (Documentation/virt/kvm/devices/arm-vgic-its.rst): its
 * registers (attr = offset in the ITS frame, always a __u64), and GRP_CTRL
 * commands that flush its tables (and, on the vGICv3, the LPI pending bits)
 * into guest RAM or read them back */
#define KVM_DEV_ARM_VGIC_GRP_ITS_REGS 8
#define KVM_DEV_ARM_ITS_SAVE_TABLES 1
#define KVM_DEV_ARM_ITS_RESTORE_TABLES 2
#define KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES 3
/* vGICv3 state access (Documentation/virt/kvm/devices/arm-vgic-v3.rst): the
 * attr of DIST_REGS/REDIST_REGS/CPU_SYSREGS/LEVEL_INFO carries the vCPU's MPIDR
 * affinity (Aff3.Aff2.Aff1.Aff0) in [63:32]; the register offset, the sysreg
 * instr (Op0 Op1 CRn CRm Op2, the KVM_REG_ARM64_SYSREG layout) or the
 * level-info selector in [31:0]. */
#define KVM_DEV_ARM_VGIC_V3_MPIDR_SHIFT 32
#define KVM_DEV_ARM_VGIC_OFFSET_SHIFT 0
#define KVM_DEV_ARM_VGIC_SYSREG_INSTR_MASK 0xffff
#define KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT 10
#define KVM_DEV_ARM_VGIC_LINE_LEVEL_INTID_MASK 0x3ff
#define VGIC_LEVEL_INFO_LINE_LEVEL 0
#define KVM_REG_ARM64_SYSREG_OP0_SHIFT 14
#define KVM_REG_ARM64_SYSREG_OP1_SHIFT 11
#define KVM_REG_ARM64_SYSREG_CRN_SHIFT 7
#define KVM_REG_ARM64_SYSREG_CRM_SHIFT 3
#define KVM_REG_ARM64_SYSREG_OP2_SHIFT 0
#define KVM_ARM_VCPU_TIMER_CTRL 1
#define KVM_ARM_VCPU_TIMER_IRQ_VTIMER 0
#define KVM_ARM_VCPU_TIMER_IRQ_PTIMER 1

/* KVM_IRQ_LINE layout */
#define KVM_ARM_IRQ_VCPU2_SHIFT 28
#define KVM_ARM_IRQ_TYPE_SHIFT 24
#define KVM_ARM_IRQ_VCPU_SHIFT 16
#define KVM_ARM_IRQ_TYPE_CPU 0
#define KVM_ARM_IRQ_TYPE_SPI 1
#define KVM_ARM_IRQ_TYPE_PPI 2

/* memory regions */
#define KVM_MEM_LOG_DIRTY_PAGES 1
#define KVM_MEM_READONLY 2

/* dirty page logging (Documentation/virt/kvm/api.rst 4.8, 4.117): one bit per
 * page of the slot, in unsigned longs (little-endian on arm64) */
#define KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE 1
#define KVM_DIRTY_LOG_INITIALLY_SET 2
struct kvm_dirty_log {
    uint32_t slot;
    uint32_t padding1;
    union {
        void *dirty_bitmap;
        uint64_t padding2;
    };
};

struct kvm_clear_dirty_log {
    uint32_t slot;
    uint32_t num_pages;
    uint64_t first_page;
    union {
        void *dirty_bitmap;
        uint64_t padding2;
    };
};

/* coalesced MMIO (include/uapi/linux/kvm.h, virt/kvm/coalesced_mmio.c): writes
 * to a registered zone are queued in a ring page of the vCPU mapping (page
 * offset = KVM_CHECK_EXTENSION(KVM_CAP_COALESCED_MMIO)) instead of exiting. */
struct kvm_coalesced_mmio_zone {
    uint64_t addr;
    uint32_t size;
    union {
        uint32_t pad;
        uint32_t pio;
    };
};

struct kvm_coalesced_mmio {
    uint64_t phys_addr;
    uint32_t len;
    union {
        uint32_t pad;
        uint32_t pio;
    };
    uint8_t data[8];
};

struct kvm_coalesced_mmio_ring {
    uint32_t first, last;
    struct kvm_coalesced_mmio coalesced_mmio[];
};

#define KVM_CAP_COALESCED_MMIO 15

/* irqfd / ioeventfd flags (include/uapi/linux/kvm.h). With RESAMPLE the line
 * stays asserted until the guest EOIs it; KVM then lowers it and signals the
 * resamplefd, so userspace can raise it again while its device still wants
 * the interrupt (level semantics). */
#define KVM_CAP_IRQFD_RESAMPLE 82
#define KVM_IRQFD_FLAG_DEASSIGN 1
#define KVM_IRQFD_FLAG_RESAMPLE 2
#define KVM_IRQ_ROUTING_IRQCHIP 1
#define KVM_IRQ_ROUTING_MSI 2
#define KVM_MSI_VALID_DEVID 1
#define KVM_IOEVENTFD_FLAG_DATAMATCH 1
#define KVM_IOEVENTFD_FLAG_DEASSIGN 4

/* ---- vhost (include/uapi/linux/vhost.h, vhost_types.h) --------------------
 * The in-kernel virtio data planes: /dev/vhost-net, /dev/vhost-vsock. Ring
 * addresses are addresses in this process (the kernel translates them with
 * the memory table). */
struct vhost_vring_state {
    unsigned int index;
    unsigned int num;
};

struct vhost_vring_file {
    unsigned int index;
    int fd;
};

struct vhost_vring_addr {
    unsigned int index;
    unsigned int flags;
    uint64_t desc_user_addr;
    uint64_t used_user_addr;
    uint64_t avail_user_addr;
    uint64_t log_guest_addr;
};

struct vhost_memory_region {
    uint64_t guest_phys_addr;
    uint64_t memory_size;
    uint64_t userspace_addr;
    uint64_t flags_padding;
};

struct vhost_memory {
    uint32_t nregions;
    uint32_t padding;
    struct vhost_memory_region regions[];
};

#define VHOST_VIRTIO 0xAF
#define VHOST_F_LOG_ALL 26
#define VHOST_NET_F_VIRTIO_NET_HDR 27

/* ---- tun/tap (include/uapi/linux/if_tun.h) ------------------------------- */
#define IFF_TAP 2
#define IFF_NO_PI 4096
#define IFF_VNET_HDR 16384
#define TUN_F_CSUM 1
#define TUN_F_TSO4 2
#define TUN_F_TSO6 4
#define TUN_F_TSO_ECN 8
