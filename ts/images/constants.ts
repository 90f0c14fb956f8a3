/** Numbers of the CRIU image format and of the kernel's mmap flags (spec §4). */

export const PAGE_SIZE = 4096;
export const PAGE_SIZE_N = 4096n;

/** Magic numbers: the first u32(s) of every image file. */
export const MAGIC = {
  common: 0x54564319,
  service: 0x55105940,
  inventory: 0x58313116,
  pstree: 0x50273030,
  core: 0x55053847,
  mm: 0x57492820,
  pagemap: 0x56084025,
  ids: 0x54432030,
} as const;

/** Pagemap entry flags. */
export const PE_PARENT = 1;
export const PE_LAZY = 2;
export const PE_PRESENT = 4;

/** vma_entry.flags (MAP_*). */
export const MAP_SHARED = 0x1;
export const MAP_PRIVATE = 0x2;
export const MAP_ANONYMOUS = 0x20;
export const MAP_GROWSDOWN = 0x100;
export const MAP_LOCKED = 0x2000;
export const MAP_HUGETLB = 0x40000;

/** vma_entry.status (VMA_*). */
export const VMA_AREA_REGULAR = 1 << 0;
export const VMA_AREA_STACK = 1 << 1;
export const VMA_AREA_VSYSCALL = 1 << 2;
export const VMA_AREA_VDSO = 1 << 3;
export const VMA_AREA_HEAP = 1 << 5;
export const VMA_FILE_PRIVATE = 1 << 6;
export const VMA_FILE_SHARED = 1 << 7;
export const VMA_ANON_SHARED = 1 << 8;
export const VMA_ANON_PRIVATE = 1 << 9;
export const VMA_AREA_SYSVIPC = 1 << 10;
export const VMA_AREA_SOCKET = 1 << 11;
export const VMA_AREA_VVAR = 1 << 12;
export const VMA_AREA_AIORING = 1 << 13;
export const VMA_AREA_MEMFD = 1 << 14;
export const VMA_AREA_SHSTK = 1 << 15;
export const VMA_AREA_GUARD = 1 << 16;
export const VMA_AREA_UPROBES = 1 << 17;

/** Names for human output (inspect), lowest bit first. */
export const VMA_STATUS_NAMES: [number, string][] = [
  [VMA_AREA_REGULAR, 'REGULAR'], [VMA_AREA_STACK, 'STACK'], [VMA_AREA_VSYSCALL, 'VSYSCALL'],
  [VMA_AREA_VDSO, 'VDSO'], [VMA_AREA_HEAP, 'HEAP'], [VMA_FILE_PRIVATE, 'FILE_PRIVATE'],
  [VMA_FILE_SHARED, 'FILE_SHARED'], [VMA_ANON_SHARED, 'ANON_SHARED'], [VMA_ANON_PRIVATE, 'ANON_PRIVATE'],
  [VMA_AREA_SYSVIPC, 'SYSVIPC'], [VMA_AREA_SOCKET, 'SOCKET'], [VMA_AREA_VVAR, 'VVAR'],
  [VMA_AREA_AIORING, 'AIORING'], [VMA_AREA_MEMFD, 'MEMFD'], [VMA_AREA_SHSTK, 'SHSTK'],
  [VMA_AREA_GUARD, 'GUARD'], [VMA_AREA_UPROBES, 'UPROBES'], [1 << 30, 'PREMMAPED'], [2 ** 31, 'UNSUPP'],
];
export const MAP_FLAG_NAMES: [number, string][] = [
  [MAP_SHARED, 'SHARED'], [MAP_PRIVATE, 'PRIVATE'], [MAP_ANONYMOUS, 'ANON'], [MAP_GROWSDOWN, 'GROWSDOWN'],
  [MAP_LOCKED, 'LOCKED'], [MAP_HUGETLB, 'HUGETLB'],
];

/** core_entry.tc.task_state values (CRIU/compel task-state numbering). */
export const TASK_ALIVE = 1;
export const TASK_DEAD = 2;
export const TASK_STOPPED = 3;
export const TASK_ZOMBIE = 6;
