//! Steering by flow, kept in order: the BPF program that picks which
//! member of a fanout group reads a frame, so that a worker per CPU is
//! woken on the CPU the frame arrived on without reordering any flow.
//!
//! A plain split by CPU (`PACKET_FANOUT_CPU`) reorders TCP: a flow's
//! segments leave the sender from two CPUs (the sending process and the
//! softirq that handles its ACKs), so they land in two members' queues
//! and the two readers forward them in whatever order they wake
//! (docs/benchmarks.md, "Per CPU reorders a flow"). The kernel met the
//! same problem when Receive Flow Steering moves a flow to the CPU of its
//! consumer, and solved it with a rule this program applies
//! (Documentation/networking/scaling.rst, "RFS"; `get_rps_cpu` in
//! net/core/dev.c): a flow moves to another queue only once the queue it
//! was on has been read past the flow's last packet. Until then its
//! packets follow the last one, into the same queue.
//!
//! What the program keeps, in two BPF array maps:
//!
//! - a flow table: for each of [`FLOWS`] buckets of a hash of the IPv4
//!   addresses, protocol and ports, the member the flow went to last and
//!   that member's position (`tail`, below) just after it. Flows that
//!   share a bucket are steered as one, as in RFS's flow table.
//! - for each member, `tail`: the frames the program has steered to it
//!   (the program adds one, atomically, per frame), and `head`: how far
//!   its reader has read. The second map is shared with the readers
//!   through `mmap` (`BPF_F_MMAPABLE`, Linux 5.5): a reader publishes its
//!   `head` with a plain store, no system call ([`MemberProgress`]).
//!
//! For each frame the program takes the member of the CPU it runs on (the
//! receiving CPU modulo the members, as `PACKET_FANOUT_CPU` would), and
//! keeps the flow's previous member instead while that member's `head` is
//! behind the flow's position. A frame of another protocol than IPv4
//! falls in bucket 0; so does one too short to hold an IPv4 header.
//!
//! An IPIP packet (RFC 2003, IP protocol 4) is hashed by the packet it
//! carries, in a fanout group (an IPIP underlay split among workers):
//! every flow between two nodes has the same outer addresses, and hashed
//! by them all would share one bucket, and so one member, as Receive
//! Packet Steering's flow dissector looks inside IPIP for the same
//! reason (`__skb_flow_dissect`, net/core/flow_dissector.c). A fragment
//! of an IPIP packet is hashed by its outer header.
//!
//! A reader's `head` may lag its true position (a frame the kernel
//! dropped for a full queue was counted in `tail` but is never read): a
//! flow then stays on its member a little longer, which costs a wake-up
//! on another CPU, never order. To catch up, a reader that finds its
//! queue empty sets `head` to the `tail` it saw before it read. The one
//! window left is a frame counted in `tail` but not yet queued when the
//! reader looked (the time between the program and the queueing, in the
//! same softirq): a flow whose next frame arrives on another CPU in that
//! window may overtake it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::bpf::{
    add32_imm, add64_imm, add64_reg, and32_imm, call, exit, fetch_add32, jeq32_imm, jeq32_reg,
    jeq_imm, jge32_imm, jgt32_reg, jlt32_imm, jlt_imm, jne32_imm, jsge32_imm, load16, load32,
    load64, load8, load_map, load_program, lsh32_imm, mod32_imm, mov32_imm, mov64_imm, mov64_reg,
    mul32_imm, owned_fd, rsh32_imm, store32, store64, sub32_reg, sub64_reg, xor64_reg, Assembler,
    Instruction, Reg, ETHERTYPE_IPV4, GET_SMP_PROCESSOR_ID, IPV4_FRAGMENT_BITS, KTIME_GET_NS,
    MAP_LOOKUP_ELEM, PROTOCOL_IPIP, PROTOCOL_TCP, PROTOCOL_UDP, SKB_LEN, SKB_LOAD_BYTES,
    SKB_LOAD_BYTES_RELATIVE, SKB_PROTOCOL,
};

/// The name the program shows under in `bpftool prog`.
pub const PROGRAM_NAME: &str = "podswitch_flow";

/// The quiet gap podswitch moves flows after: on the AF_PACKET ceiling
/// it kept reordering at or below the kernel bridge's own, across two
/// switches in a chain too, where 1 ms left twice the bridge's and none
/// three to eight times as much (docs/benchmarks.md, "Flows kept in
/// order"). A ping or a request-response flow is quiet for longer
/// between its packets, and still follows its sender's CPU.
pub const DEFAULT_GAP: Duration = Duration::from_millis(2);

/// Buckets in the flow table (a power of two). RFS sizes its table to
/// the flows expected at once; a node's pods rarely hold more than a few
/// hundred active flows through one port.
pub const FLOWS: u32 = 1 << FLOW_BITS;
const FLOW_BITS: u32 = 12;

/// A flow table entry: the member, the position after its last frame,
/// and when that frame came (`bpf_ktime_get_ns`).
const ENTRY_MEMBER: i16 = 0;
const ENTRY_POSITION: i16 = 4;
const ENTRY_LAST_SEEN: i16 = 8;
const ENTRY_BYTES: u32 = 16;

/// A member's counters: `tail` and `head` on cache lines of their own, as
/// the kernel writes the one and the reader the other.
const TAIL: usize = 0;
const HEAD: usize = 64;
const MEMBER_BYTES: usize = 128;

/// `BPF_HDR_START_NET`: an offset of `bpf_skb_load_bytes_relative` counts
/// from the network header.
const FROM_NETWORK_HEADER: i32 = 1;
/// Where the program copies the IPv4 header's first 20 bytes, and a TCP
/// or UDP header's ports, on its stack (below the map key [`lookup`]
/// stages at -4).
const HEADER_AT: i16 = -24;
const PORTS_AT: i16 = -32;
/// Where the program keeps the offset of the header it hashes from the
/// network header: 0, or past an IPIP packet's outer header.
const BASE_AT: i16 = -40;
/// The shortest IPv4 header.
const IPV4_HEADER_BYTES: u32 = 20;
/// Fibonacci hashing's multiplier (2^32 divided by the golden ratio): its
/// top bits spread the XOR of addresses and ports over the table.
const GOLDEN: u32 = 0x9e37_79b9;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Label {
    /// The bucket is in r7.
    Hashed,
    /// The IPv4 header to hash is at `HEADER_AT`.
    Header,
    /// Addresses and protocol are in r7; hash them.
    Mix,
    Ports,
    NoEntry,
    /// The flow stays on its member.
    Stay,
    /// The member is in r9.
    Chosen,
    Return,
}

/// Which kind of group a program steers: what `skb->len` counts from
/// when it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// A packet socket fanout group (`PACKET_FANOUT_EBPF`), or the
    /// queues of a TUN device (`TUNSETSTEERINGEBPF`): the program sees
    /// the frame from its network header, and `skb->len` counts from
    /// there.
    Fanout,
    /// A UDP socket's `SO_REUSEPORT` group (`SO_ATTACH_REUSEPORT_EBPF`,
    /// Linux 4.6): the program sees the datagram with its UDP header
    /// pulled, and `skb->len` counts the payload only
    /// (`reuseport_select_sock`, net/core/sock_reuseport.c).
    Reuseport,
}

/// The program for a `group` of `members`, with the flow table
/// `flows_fd` and the members' counters `counters_fd`, that moves a flow
/// only after it has been quiet for `gap_ns` (see [`FlowSteering::new`]).
/// It copies what it reads of the packet to its stack, relative to the
/// network header wherever the group's view of the packet starts
/// (`bpf_skb_load_bytes` in a fanout group, whose view starts there;
/// `bpf_skb_load_bytes_relative` in a reuseport group, whose view starts
/// at the UDP payload). In a fanout group it checks the
/// lengths it reads against `skb->len`; in a reuseport group, whose
/// datagrams the kernel's UDP has checked, the copy's own bounds check
/// is enough. A copy that fails leaves the frame in bucket 0 (no header)
/// or hashed without its ports.
///
/// Registers: r6 the context, r7 the hash, then the bucket, then the
/// time; r8 the IPv4 protocol and then the flow's entry; r9 the frame's
/// length and then the member chosen.
pub fn program(
    group: Group,
    members: u32,
    gap_ns: u32,
    flows_fd: i32,
    counters_fd: i32,
) -> Vec<Instruction> {
    let checks_lengths = group == Group::Fanout;
    let mut a = Assembler::default();
    a.op(mov64_reg(6, 1));
    a.op(mov64_imm(7, 0));
    a.op(load32(9, 6, SKB_LEN));
    a.op(load32(0, 6, SKB_PROTOCOL));
    a.jump(jne32_imm(0, ETHERTYPE_IPV4, 0), Label::Hashed);
    if checks_lengths {
        a.jump(jlt32_imm(9, IPV4_HEADER_BYTES, 0), Label::Hashed);
    }
    // Source and destination address, and the protocol, from the IPv4
    // header copied whole to the stack: one helper call, where a legacy
    // load per field costs a call each, and each a copy through
    // `skb_copy_bits` when the header is not in the skb's linear part (a
    // frame sent through a packet ring, as trafgen's, has none there).
    a.op(mov64_imm(2, 0));
    copy_from_network_header(&mut a, group, IPV4_HEADER_BYTES, HEADER_AT);
    a.jump(jne32_imm(0, 0, 0), Label::Hashed);
    if group == Group::Fanout {
        look_inside_ipip(&mut a);
    }
    a.place(Label::Header);
    a.op(load32(7, 10, HEADER_AT + 12));
    a.op(load32(0, 10, HEADER_AT + 16));
    a.op(xor64_reg(7, 0));
    a.op(load8(8, 10, HEADER_AT + 9));
    a.op(xor64_reg(7, 8));
    // A fragment has no ports (or only the first has): the addresses
    // alone keep every fragment of a datagram in one bucket. (The
    // stack holds the wire's bytes: the mask is built over them.)
    a.op(load16(0, 10, HEADER_AT + 6));
    a.op(and32_imm(0, IPV4_FRAGMENT_BITS));
    a.jump(jne32_imm(0, 0, 0), Label::Mix);
    // TCP's and UDP's first four bytes are the two ports.
    a.jump(jeq32_imm(8, PROTOCOL_TCP, 0), Label::Ports);
    a.jump(jne32_imm(8, PROTOCOL_UDP, 0), Label::Mix);
    a.place(Label::Ports);
    a.op(load8(2, 10, HEADER_AT));
    a.op(and32_imm(2, 0x0f));
    a.op(lsh32_imm(2, 2));
    if group == Group::Fanout {
        a.op(load32(0, 10, BASE_AT));
        a.op(add64_reg(2, 0));
    }
    if checks_lengths {
        a.op(mov64_reg(1, 2));
        a.op(add32_imm(1, 4));
        a.jump(jgt32_reg(1, 9, 0), Label::Mix);
    }
    copy_from_network_header(&mut a, group, 4, PORTS_AT);
    a.jump(jne32_imm(0, 0, 0), Label::Mix);
    a.op(load32(0, 10, PORTS_AT));
    a.op(xor64_reg(7, 0));
    a.place(Label::Mix);
    a.op(mul32_imm(7, GOLDEN));
    a.op(rsh32_imm(7, 32 - FLOW_BITS));

    a.place(Label::Hashed);
    lookup(&mut a, flows_fd, 7, Label::NoEntry);
    a.op(mov64_reg(8, 0));
    a.op(call(KTIME_GET_NS));
    a.op(mov64_reg(7, 0));
    // The member of the CPU this runs on.
    a.op(call(GET_SMP_PROCESSOR_ID));
    a.op(mod32_imm(0, members));
    a.op(mov64_reg(9, 0));
    a.op(load32(1, 8, ENTRY_MEMBER));
    a.jump(jeq32_reg(1, 9, 0), Label::Chosen);
    a.jump(jge32_imm(1, members, 0), Label::Chosen);
    // The flow was on another member: it stays there until it has been
    // quiet for the gap...
    a.op(load64(2, 8, ENTRY_LAST_SEEN));
    a.op(mov64_reg(3, 7));
    a.op(sub64_reg(3, 2));
    a.jump(jlt_imm(3, gap_ns as i32, 0), Label::Stay);
    // ...and that member's reader has read past the flow's last frame.
    lookup(&mut a, counters_fd, 1, Label::Chosen);
    a.op(load32(1, 0, HEAD as i16));
    a.op(load32(2, 8, ENTRY_POSITION));
    a.op(sub32_reg(1, 2));
    a.jump(jsge32_imm(1, 0, 0), Label::Chosen);
    a.place(Label::Stay);
    a.op(load32(9, 8, ENTRY_MEMBER));

    a.place(Label::Chosen);
    lookup(&mut a, counters_fd, 9, Label::Return);
    a.op(mov32_imm(1, 1));
    a.op(fetch_add32(0, TAIL as i16, 1));
    a.op(add32_imm(1, 1));
    a.op(store32(8, ENTRY_POSITION, 1));
    a.op(store32(8, ENTRY_MEMBER, 9));
    a.op(store64(8, ENTRY_LAST_SEEN, 7));
    a.place(Label::Return);
    a.op(mov64_reg(0, 9));
    a.op(exit());

    // Never taken (an array has every key below its size); the verifier
    // needs the branch.
    a.place(Label::NoEntry);
    a.op(call(GET_SMP_PROCESSOR_ID));
    a.op(exit());
    a.finish()
}

/// In a fanout group: the header to hash is the IPv4 header an IPIP
/// packet carries, copied over the outer one at `HEADER_AT`, and its
/// offset goes to `BASE_AT` (0 for any other frame). Too short a packet,
/// or a fragment, keeps the outer header. Clobbers r0 to r5 and r8.
fn look_inside_ipip(a: &mut Assembler<Label>) {
    a.op(mov64_imm(0, 0));
    a.op(store32(10, BASE_AT, 0));
    a.op(load8(8, 10, HEADER_AT + 9));
    a.jump(jne32_imm(8, PROTOCOL_IPIP, 0), Label::Header);
    a.op(load16(0, 10, HEADER_AT + 6));
    a.op(and32_imm(0, IPV4_FRAGMENT_BITS));
    a.jump(jne32_imm(0, 0, 0), Label::Header);
    a.op(load8(2, 10, HEADER_AT));
    a.op(and32_imm(2, 0x0f));
    a.op(lsh32_imm(2, 2));
    a.op(mov64_reg(1, 2));
    a.op(add32_imm(1, IPV4_HEADER_BYTES));
    a.jump(jgt32_reg(1, 9, 0), Label::Header);
    a.op(store32(10, BASE_AT, 2));
    copy_from_network_header(a, Group::Fanout, IPV4_HEADER_BYTES, HEADER_AT);
    // A failed copy leaves the stack's header zeroed (the helper clears
    // it): the frame goes to bucket 0, as any unreadable one.
    a.jump(jne32_imm(0, 0, 0), Label::Hashed);
}

/// Copies `len` bytes at the offset in r2 from the network header to the
/// stack at `to`; `r0` is 0, or negative if the packet is shorter.
/// Clobbers r1 to r5.
/// A fanout group's program sees the packet from its network header,
/// through `bpf_skb_load_bytes`, which reads a non-linear skb too; a
/// reuseport group's sees the UDP payload, and reaches back to the
/// network header through `bpf_skb_load_bytes_relative`, which reads the
/// linear part only, where UDP's receive has pulled the headers it
/// checked.
fn copy_from_network_header(a: &mut Assembler<Label>, group: Group, len: u32, to: i16) {
    a.op(mov64_reg(1, 6));
    a.op(mov64_reg(3, 10));
    a.op(add64_imm(3, i32::from(to)));
    a.op(mov64_imm(4, len as i32));
    match group {
        Group::Fanout => a.op(call(SKB_LOAD_BYTES)),
        Group::Reuseport => {
            a.op(mov64_imm(5, FROM_NETWORK_HEADER));
            a.op(call(SKB_LOAD_BYTES_RELATIVE));
        }
    }
}

/// `r0 = &map[key]`, the map's value at the `u32` index in register
/// `key` (staged on the stack, where the helper reads keys from), or a
/// jump to `missing` if it has none; clobbers r1 to r5.
fn lookup(a: &mut Assembler<Label>, map_fd: i32, key: Reg, missing: Label) {
    a.op(store32(10, -4, key));
    a.op(mov64_reg(2, 10));
    a.op(add64_imm(2, -4));
    a.ops(&load_map(1, map_fd));
    a.op(call(MAP_LOOKUP_ELEM));
    a.jump(jeq_imm(0, 0, 0), missing);
}

/// The members' counters, mapped into this process: `tail` and `head`
/// of each member, shared with the program.
#[derive(Debug)]
struct MemberCounters {
    base: NonNull<u8>,
    len: usize,
    members: usize,
}

// SAFETY: the mapping is only ever touched through `AtomicU32`s (below),
// which any thread may use; it lives until the last reference drops.
unsafe impl Send for MemberCounters {}
// SAFETY: as above: shared access is atomic only.
unsafe impl Sync for MemberCounters {}

impl MemberCounters {
    /// Maps the counters of array map `map` (`BPF_F_MMAPABLE`, `members`
    /// values of [`MEMBER_BYTES`]).
    fn map(map: BorrowedFd<'_>, members: usize) -> io::Result<MemberCounters> {
        // SAFETY: sysconf has no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
            .map_err(|_| io::Error::other("the page size is unknown"))?;
        let len = (members * MEMBER_BYTES).div_ceil(page) * page;
        // SAFETY: a new shared mapping of `len` bytes of the map, which
        // the kernel sized to at least the members' values (an array
        // map's mmap covers its values, rounded up to pages:
        // `array_map_mmap`, kernel/bpf/arraymap.c). Nothing else in this
        // process refers to the address returned.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.as_raw_fd(),
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap gave null"))?;
        Ok(MemberCounters { base, len, members })
    }

    /// The counter at `offset` in `member`'s value.
    fn counter(&self, member: usize, offset: usize) -> &AtomicU32 {
        assert!(member < self.members, "member {member} of {}", self.members);
        // SAFETY: the address lies inside the mapping (checked above),
        // 4-byte aligned (page-aligned base, offsets multiples of 64), and
        // stays mapped while `self` lives. The kernel's program changes it
        // with atomic instructions or plain 32-bit loads, never torn.
        unsafe {
            &*self
                .base
                .as_ptr()
                .add(member * MEMBER_BYTES + offset)
                .cast::<AtomicU32>()
        }
    }
}

impl Drop for MemberCounters {
    fn drop(&mut self) {
        // SAFETY: `base` and `len` are the mapping made in `map`, and no
        // reference into it outlives `self`.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The steering program of one fanout (or reuseport) group, and the maps
/// it keeps its flows and the members' counters in.
#[derive(Debug)]
pub struct FlowSteering {
    program: OwnedFd,
    counters: Arc<MemberCounters>,
    group: Group,
}

impl FlowSteering {
    /// Creates the maps and loads the program for a `group` of
    /// `members`, which moves a flow to another member only after the
    /// flow has been quiet for `gap` (see the module's documentation; at
    /// most 2 s).
    pub fn new(group: Group, members: usize, gap: Duration) -> io::Result<FlowSteering> {
        let gap_ns = u32::try_from(gap.as_nanos())
            .ok()
            .filter(|&ns| ns <= i32::MAX as u32)
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("a gap of {gap:?} (at most 2 s)"),
                )
            })?;
        let count = u32::try_from(members)
            .ok()
            .filter(|&m| m > 0)
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{members} members"))
            })?;
        let flows = create_array(c"podswitch_flows", ENTRY_BYTES, FLOWS, 0)
            .map_err(|e| io::Error::new(e.kind(), format!("the flow table: {e}")))?;
        let counters_map = create_array(
            c"podswitch_heads",
            MEMBER_BYTES as u32,
            count,
            libbpf_sys::BPF_F_MMAPABLE,
        )
        .map_err(|e| io::Error::new(e.kind(), format!("the members' counters: {e}")))?;
        let counters = MemberCounters::map(counters_map.as_fd(), members)?;
        let code = program(
            group,
            count,
            gap_ns,
            flows.as_raw_fd(),
            counters_map.as_raw_fd(),
        );
        // The program holds both maps from here on, and the mapping holds
        // the counters: the descriptors can go.
        let program = load_program(libbpf_sys::BPF_PROG_TYPE_SOCKET_FILTER, PROGRAM_NAME, &code)
            .map_err(|e| io::Error::new(e.kind(), format!("loading the steering program: {e}")))?;
        Ok(FlowSteering {
            program,
            counters: Arc::new(counters),
            group,
        })
    }

    /// The program, for `PACKET_FANOUT_DATA` or `SO_ATTACH_REUSEPORT_EBPF`.
    pub fn program(&self) -> BorrowedFd<'_> {
        self.program.as_fd()
    }

    /// Ok if it is made for a `group`; the error says what it is for.
    pub fn check_group(&self, group: Group) -> io::Result<()> {
        if self.group == group {
            return Ok(());
        }
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a steering program for a {:?} group steers a {group:?} group",
                self.group
            ),
        ))
    }

    /// The members it steers among.
    pub fn members(&self) -> usize {
        self.counters.members
    }

    /// The handle through which member `member`'s reader tells the
    /// program how far it has read.
    pub fn progress(&self, member: usize) -> MemberProgress {
        assert!(
            member < self.members(),
            "member {member} of {}",
            self.members()
        );
        MemberProgress {
            counters: Arc::clone(&self.counters),
            member,
        }
    }
}

/// Creates a BPF array map of `entries` values of `value_bytes`, keyed by
/// a `u32` index, with `flags`.
fn create_array(
    name: &std::ffi::CStr,
    value_bytes: u32,
    entries: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: std::mem::size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
        map_flags: flags,
        ..Default::default()
    };
    // SAFETY: the name is NUL-terminated and `opts` a correctly sized
    // option structure that outlives the call. The return is a new map
    // descriptor or a negative errno.
    owned_fd(unsafe {
        libbpf_sys::bpf_map_create(
            libbpf_sys::BPF_MAP_TYPE_ARRAY,
            name.as_ptr(),
            4,
            value_bytes,
            entries,
            &opts,
        )
    })
}

/// What one member's reader publishes to the steering program: how far
/// it has read. Only that reader writes it, and only once the frames it
/// read have been sent on: a flow may move to another member as soon as
/// this says so, and that member's reader could send the flow's next
/// frame before a batch read but not yet sent.
///
/// ```text
/// let mark = progress.steered();      // before reading
/// let got = socket.recv_batch(...)?;
/// ... send the frames on ...
/// progress.read(mark, got, got < batch_capacity);
/// ```
#[derive(Debug, Clone)]
pub struct MemberProgress {
    counters: Arc<MemberCounters>,
    member: usize,
}

impl MemberProgress {
    /// The frames steered to this member so far. Taken before a read, it
    /// tells [`read`](Self::read) how far an empty queue means the reader
    /// has come.
    pub fn steered(&self) -> u32 {
        self.counters
            .counter(self.member, TAIL)
            .load(Ordering::Acquire)
    }

    /// After a read that gave `frames`, and after they have been sent on,
    /// with `mark` from [`steered`](Self::steered) taken before the read:
    /// `emptied` says the read found the queue empty (it gave fewer than
    /// it could have taken), so every frame steered before `mark` has
    /// been read or dropped.
    pub fn read(&self, mark: u32, frames: usize, emptied: bool) {
        let head = self.counters.counter(self.member, HEAD);
        let mut position = head.load(Ordering::Relaxed).wrapping_add(frames as u32);
        // Positions wrap: `mark` is ahead if the distance is positive as
        // a signed number, as the program compares them.
        if emptied && (mark.wrapping_sub(position) as i32) > 0 {
            position = mark;
        }
        // Never past what the program has steered here: a frame it never
        // counted (one queued before the program was set, or while the
        // group was still filling and the kernel took its choice modulo
        // fewer members) would otherwise put `head` ahead for good, and
        // let a flow move while its frames still wait.
        let tail = self.steered();
        if (position.wrapping_sub(tail) as i32) > 0 {
            position = tail;
        }
        head.store(position, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_jump_lands_inside_the_program_and_forward() {
        for group in [Group::Fanout, Group::Reuseport] {
            let p = program(group, 2, 100_000, 3, 4);
            crate::sys::bpf::assert_jumps_forward_inside(&p);
            assert_eq!(p[p.len() - 1], exit());
        }
    }
}
