#!/usr/bin/perl
# Drives the Perl interimap's own database code for the state database
# tests: the schema block of the installed tool is extracted and run as is
# (creation or v0 -> v1 migration), and its open sequence is reproduced to
# check that the two tools exclude each other.
#
#   perl_state.pl TOOL create PATH           new file, tool's schema code
#   perl_state.pl TOOL migrate PATH DELIM    run the tool's schema code on a
#                                            v0 file (DELIM "" for NIL)
#   perl_state.pl TOOL hold PATH             open + lock, print "ready",
#                                            hold until stdin closes
#   perl_state.pl TOOL try PATH              open + lock, exit 0; exit 3 if
#                                            locked
# Exit 77 if DBI/DBD::SQLite or the tool is missing.
use strict;
use warnings;
use Fcntl qw/O_WRONLY O_CREAT O_EXCL/;

my ($tool, $mode, $path, $delim) = @ARGV;
eval { require DBI; require DBD::SQLite::Constants; DBI->import(':sql_types'); 1 } or exit 77;
open my $fh, '<', $tool or exit 77;
my $src = do { local $/; <$fh> };
close $fh;

# the same connection sequence as the tool (see its "Open (and maybe
# create) the database" section)
sub connect_like_tool {
    unless (-e $path) {
        sysopen(my $f, $path, O_WRONLY | O_CREAT | O_EXCL, 0600) or die "create $path: $!";
        close $f;
    }
    my $dbh = DBI->connect("dbi:SQLite:dbname=$path", undef, undef, {
        AutoCommit => 0, RaiseError => 1, PrintError => 0,
        sqlite_use_immediate_transaction => 1,
        sqlite_open_flags => DBD::SQLite::Constants::SQLITE_OPEN_READWRITE(),
    });
    $dbh->sqlite_busy_timeout(250);
    $dbh->do("PRAGMA locking_mode = EXCLUSIVE");
    $dbh->{AutoCommit} = 1;
    $dbh->do("PRAGMA foreign_keys = OFF");
    return $dbh;
}

if ($mode eq 'create' or $mode eq 'migrate') {
    # the tool's schema block, from "my @schema = (" to the line that turns
    # AutoCommit off again
    $src =~ /^(\s*my \@schema = \(.*?^\s*\$DBH->\{AutoCommit\} = 0;[^\n]*\n)/ms
        or die "schema code not found in $tool";
    my $code = $1;
    our $DBH = connect_like_tool();
    our $DATABASE_VERSION = 1;
    our $DBFILE = $path;
    my $d = (defined $delim and $delim ne '') ? $delim : undef;
    our $IMAP = { local => { delimiter => $d }, remote => { delimiter => $d } };
    no strict 'vars';
    no warnings;
    local *msg = sub { };
    local *fail = sub { shift; die join('', @_), "\n" };
    local *print_delimiter = sub { my $x = shift // return "NIL"; return "\"$x\"" };
    eval "package main; no strict; $code; 1" or die "schema code failed: $@";
    $DBH->disconnect();
    exit 0;
}
if ($mode eq 'hold') {
    my $dbh = connect_like_tool();
    $| = 1;
    print "ready\n";
    1 while defined <STDIN>;
    $dbh->disconnect();
    exit 0;
}
if ($mode eq 'try') {
    my $dbh = eval { connect_like_tool() };
    if (!defined $dbh) {
        print STDERR $@;
        exit($@ =~ /database is locked/ ? 3 : 1);
    }
    $dbh->disconnect();
    exit 0;
}
die "unknown mode $mode\n";
